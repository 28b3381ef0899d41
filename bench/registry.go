package main

import (
	"fmt"
	"strings"
)

// Features of the bench registry.
const (
	featureChain5 = "chain5" // five sequential steps on the instant mock service
	featureSingle = "single" // one step on the instant mock service
	featureOne    = "one"    // one step on the fake HTTP service (only with a fake service)
	chainLength   = 5
)

// registryYAML returns the bench registry: an instant mock service `fast` with the features chain5
// and single and, when fakeURL is set, an http service `capped` (limit calls at once) at fakeURL with
// the feature one.
func registryYAML(fakeURL string, limit int) string {
	var b strings.Builder
	b.WriteString("services:\n")
	b.WriteString("  fast:\n    kind: mock\n    latency: 0s\n    timeout: 10s\n")
	b.WriteString("    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s}\n")
	if fakeURL != "" {
		fmt.Fprintf(&b, "  capped:\n    kind: http\n    base_url: %s\n    timeout: 10s\n", fakeURL)
		fmt.Fprintf(&b, "    max_concurrency: %d\n    lease_ttl: 30s\n", limit)
		b.WriteString("    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s}\n")
	}
	b.WriteString("features:\n")
	fmt.Fprintf(&b, "  %s:\n    steps:\n", featureChain5)
	for i := 1; i <= chainLength; i++ {
		fmt.Fprintf(&b, "      - {name: s%d, service: fast", i)
		if i > 1 {
			fmt.Fprintf(&b, ", needs: [s%d]", i-1)
		}
		b.WriteString("}\n")
	}
	fmt.Fprintf(&b, "  %s:\n    steps:\n      - {name: s1, service: fast}\n", featureSingle)
	if fakeURL != "" {
		fmt.Fprintf(&b, "  %s:\n    steps:\n", featureOne)
		b.WriteString("      - name: call\n        service: capped\n")
		b.WriteString("        request: {method: POST, path: /call, body: {job: \"{{ .job.id }}\"}}\n")
	}
	return b.String()
}

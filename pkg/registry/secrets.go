package registry

// This file holds what the registry treats as secret and how secrets are redacted.

import (
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// minSecretLen is the shortest value collected as a secret: redacting "1", "on" or "GET" everywhere
// would garble logs without protecting anything.
const minSecretLen = 4

// secretsOf collects the expanded values found under n.
func (l *loader) secretsOf(n *yaml.Node) []string {
	var out []string
	seen := map[*yaml.Node]bool{}
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil || seen[n] {
			return
		}
		seen[n] = true
		if e, ok := l.exp[n]; ok {
			out = append(out, e.values...)
		}
		if n.Kind == yaml.AliasNode {
			walk(n.Alias)
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return out
}

// secretList drops short values and duplicates and sorts longest first, the order Redact needs.
func secretList(in []string) []string {
	var out []string
	for _, s := range in {
		if len(s) >= minSecretLen && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redact replaces every secret in text with "[REDACTED]", longest secrets first.
func redact(secrets []string, text string) string {
	if len(secrets) == 0 || text == "" {
		return text
	}
	sorted := slices.Clone(secrets)
	sort.SliceStable(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	pairs := make([]string, 0, 2*len(sorted))
	for _, s := range sorted {
		if s != "" {
			pairs = append(pairs, s, "[REDACTED]")
		}
	}
	if len(pairs) == 0 {
		return text
	}
	// strings.Replacer tries the old strings in argument order at each position: longest first wins.
	return strings.NewReplacer(pairs...).Replace(text)
}

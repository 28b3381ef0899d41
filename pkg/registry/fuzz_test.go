package registry_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
)

// fuzzEnv is the environment of FuzzParse. Every value the loader takes from the environment may be a
// credential, so none may appear in an error message unless the file itself spells it out.
var fuzzEnv = map[string]string{
	"API_KEY":  "sk-fuzz-secret-0123456789",
	"TOKEN":    "tok_9f8e7d6c5b4a",
	"BASE_URL": "https://svc.internal.example:8443/v9",
	"N":        "8",
	"EMPTY":    "",
}

func fuzzLookup(k string) (string, bool) {
	v, ok := fuzzEnv[k]
	return v, ok
}

var fuzzNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// billionLaughs is nine levels of nine aliases: 387,420,489 strings once expanded.
func billionLaughs() string {
	doc := "x-a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
	prev := "a"
	for _, name := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		doc += fmt.Sprintf("x-%s: &%s [%s]\n", name, name, strings.TrimSuffix(strings.Repeat("*"+prev+", ", 9), ", "))
		prev = name
	}
	return doc + "services: {sim: {kind: mock, output: *i}}\nfeatures: {f: {steps: [{name: a, service: sim}]}}\n"
}

// registrySeeds are documents the fuzzer starts from: valid files using every feature of the format,
// and hostile ones (aliases that expand exponentially or contain themselves, NUL bytes, invalid
// UTF-8, huge numbers, deep nesting, long strings).
func registrySeeds() []string {
	return []string{
		"services: {sim: {kind: mock}}\nfeatures: {f: {steps: [{name: a, service: sim}]}}\n",
		`services:
  llm:
    base_url: ${BASE_URL}
    headers: {Authorization: "Bearer ${API_KEY}", X-Token: "${TOKEN}"}
    timeout: 60s
    max_concurrency: ${N:-4}
    rate_limit: {requests: 60, per: 1m}
    rate_limits:
      - {units: 90000, per: 1m, cost: "{{ .response.usage.total_tokens }}", reserve: "{{ .request.body.max_tokens }}"}
    concurrency_key: "{{ .input.q }}"
    max_concurrency_per_key: 2
    retry: {max_attempts: 5, initial_backoff: 1s, max_backoff: 2m}
    health: {method: GET, path: /models}
  sim: {kind: mock, latency: 5ms, fail_times: 1, failure_rate: 0.25, output: {echo: "{{ .input.q }}"}}
features:
  plan:
    description: a plan
    input:
      type: object
      required: [q]
      properties: {q: {type: string, minLength: 1, maxLength: 200, pattern: "^[a-z]+$"}, n: {type: integer, minimum: 0}}
    steps:
      - {name: a, service: llm, queue: heavy, request: {method: POST, path: /chat, query: {k: "${TOKEN}"}, body: {q: "{{ .input.q }}", all: "{{ json .input }}"}}}
      - {name: b, service: sim, needs: [a], output: "{{ .steps.a.output }}"}
      - {name: c, service: llm, needs: [a, b], timeout: 5s, retry: {max_attempts: 1}}
`,
		"x-retry: &retry {max_attempts: 2, initial_backoff: 1s, max_backoff: 5s}\nservices:\n  a: {base_url: \"https://x.example\", retry: *retry}\n  c:\n    <<: &common {base_url: \"https://z.example\", timeout: 7s}\n    timeout: 9s\n  d: {<<: [*common], max_concurrency: 2}\n",
		"services: {s: {base_url: \"${BASE_URL}\", headers: {A: \"${MISSING}\"}, timeout: \"${API_KEY}\"}}\n",
		"services: {s: {kind: mock}}\nfeatures: {f: {input: {pattern: \"${API_KEY}(\"}, steps: [{name: a, service: s}]}}\n",
		"features: {f: {steps: [{name: a, service: s, needs: [b]}, {name: b, service: s, needs: [a]}]}}\nservices: {s: {kind: mock}}\n",
		"services: {s: {kind: mock, output: &a [*a]}}\nfeatures: {f: {steps: [{name: a, service: s}]}}\n",
		"services: &s {<<: *s}\n",
		"services: {s: &m {kind: mock, output: *m}}\n",
		billionLaughs(),
		"services: {s: {kind: mock, failure_rate: 1e999999, fail_times: 99999999999999999999, output: {n: 1e999999, m: -.inf, o: .nan}}}\n",
		"services: {\"s\\0\": {kind: \"mock\\0\"}}\nfeatures: {f: {description: \"\x00\", steps: [{name: \"a\\0\", service: s}]}}\n",
		"services: {s: {kind: mock, output: \"\xff\xfe\xc3\x28\"}}\n",
		"\xef\xbb\xbfservices: {}\n",
		"services: {s: {kind: mock, output: " + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + "}}\n",
		"services: {s: {kind: mock, output: \"" + strings.Repeat("A", 1<<16) + "\"}}\n",
		"services:\n  s:\n    kind: mock\n    output: {a: \"{{ .input.x \", b: \"{{ index .input \\\"k\\\" | default 1 }}\"}\n",
		"", "---\n", "null", "[]", "services: 1\nfeatures: []\n", "%YAML 1.1\n---\n!!binary aGVsbG8=\n",
	}
}

// FuzzParse feeds any bytes to the loader. It must return a registry or an error, never both or
// neither and never panic or hang (alias bombs included); an error never shows the value of an
// environment variable the file does not spell out itself; the same bytes give the same answer; and a
// registry it returns holds the invariants the rest of CAO relies on.
func FuzzParse(f *testing.F) {
	for _, s := range registrySeeds() {
		f.Add([]byte(s))
	}
	if b, err := os.ReadFile("testdata/contract.yaml"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		reg, err := registry.Parse("r.yaml", data, fuzzLookup)
		if (reg == nil) == (err == nil) {
			t.Fatalf("Parse returned registry %v and error %v: want exactly one", reg != nil, err)
		}
		if err != nil {
			msg := err.Error()
			for k, v := range fuzzEnv {
				if len(v) >= 4 && !bytes.Contains(data, []byte(v)) && strings.Contains(msg, v) {
					t.Fatalf("error shows the value of $%s: %s", k, msg)
				}
			}
			// Messages say where: every line starts with the file name.
			for line := range strings.SplitSeq(msg, "\n") {
				if !strings.HasPrefix(line, "r.yaml: ") {
					t.Fatalf("error line without the file name: %q", line)
				}
			}
		}

		reg2, err2 := registry.Parse("r.yaml", data, fuzzLookup)
		if err != nil {
			require.Error(t, err2)
			// The lines may come in another order (schema properties are a map), never other lines.
			require.Equal(t, sortedLines(err.Error()), sortedLines(err2.Error()), "same bytes, same errors")
			return
		}
		require.NoError(t, err2)
		sum := summarize(reg)
		require.False(t, strings.HasPrefix(sum, "unencodable"), "the loader builds JSON-compatible values: %s", sum)
		require.Equal(t, sum, summarize(reg2), "same bytes, same registry")
		checkRegistry(t, reg)
	})
}

func sortedLines(s string) []string {
	lines := strings.Split(s, "\n")
	sort.Strings(lines)
	return lines
}

// summarize encodes a registry as JSON (compiled templates encode as {}), with each service's
// secrets sorted: equally long ones may come in any order.
func summarize(r *registry.Registry) string {
	services := make(map[string]registry.Service, len(r.Services))
	for name, svc := range r.Services {
		s := *svc
		s.Secrets = slices.Clone(s.Secrets)
		sort.Strings(s.Secrets)
		services[name] = s
	}
	b, err := json.Marshal(map[string]any{"path": r.Path, "services": services, "features": r.Features})
	if err != nil {
		return "unencodable: " + err.Error()
	}
	return string(b)
}

// checkRegistry asserts what the loader promises of a registry it returns.
func checkRegistry(t *testing.T, r *registry.Registry) {
	t.Helper()
	for name, s := range r.Services {
		require.Regexp(t, fuzzNameRe, name)
		require.Equal(t, name, s.Name)
		require.Contains(t, []string{registry.KindHTTP, registry.KindMock}, s.Kind, name)
		if s.Kind == registry.KindHTTP {
			u, err := url.Parse(s.BaseURL)
			require.NoError(t, err)
			require.Contains(t, []string{"http", "https"}, u.Scheme)
			require.NotEmpty(t, u.Host)
			require.False(t, strings.HasSuffix(s.BaseURL, "/"), s.BaseURL)
		}
		require.Positive(t, s.Timeout)
		require.Positive(t, s.LeaseTTL)
		require.GreaterOrEqual(t, s.MaxConcurrency, 0)
		require.Positive(t, s.MaxResponseBytes)
		checkRetry(t, s.Retry)
		checkMock(t, s.Mock)
		for _, b := range s.RateLimits {
			require.Contains(t, []string{registry.BudgetRequests, registry.BudgetUnits}, b.Kind)
			require.Positive(t, b.Limit)
			require.Positive(t, b.Per)
		}
		if kl := s.KeyLimit; kl != nil {
			require.Positive(t, kl.Max)
			require.NotNil(t, kl.Template)
		}
		if s.Health != nil && s.Health.Path != "" {
			require.True(t, strings.HasPrefix(s.Health.Path, "/") && !strings.HasPrefix(s.Health.Path, "//"), s.Health.Path)
		}
		// Header values are credentials: redacted wherever they would show.
		for _, h := range s.Headers {
			require.NotContains(t, h, "\n")
			if len(h) >= 4 {
				require.Contains(t, s.Secrets, h)
			}
		}
		for i, sec := range s.Secrets {
			require.GreaterOrEqual(t, len(sec), 4)
			if i > 0 {
				require.GreaterOrEqual(t, len(s.Secrets[i-1]), len(sec), "longest first")
			}
		}
	}
	for name, feat := range r.Features {
		require.Regexp(t, fuzzNameRe, name)
		require.NotEmpty(t, feat.Steps, name)
		seen := map[string]bool{}
		for _, st := range feat.Steps {
			require.Regexp(t, fuzzNameRe, st.Name)
			require.False(t, seen[st.Name], "duplicate step %s", st.Name)
			seen[st.Name] = true
			svc, ok := r.Service(st.Service)
			require.True(t, ok, "step %s.%s: unknown service %q", name, st.Name, st.Service)
			require.NotEmpty(t, st.Queue)
			require.NotContains(t, st.Queue, ":")
			require.Positive(t, st.Timeout)
			checkRetry(t, st.Retry)
			checkMock(t, st.Mock)
			switch svc.Kind {
			case registry.KindHTTP:
				require.NotNil(t, st.Request, "http step %s.%s has a request", name, st.Name)
				require.NotNil(t, st.Request.PathTemplate)
				require.True(t, strings.HasPrefix(st.Request.Path, "/") && !strings.HasPrefix(st.Request.Path, "//") &&
					!strings.Contains(st.Request.Path, "://"), st.Request.Path)
				require.Equal(t, st.Request.Body == nil, st.Request.BodyTemplate == nil)
				for k, h := range st.Request.Headers {
					require.NotNil(t, st.Request.HeaderTemplates[k])
					if len(h) >= 4 && !strings.Contains(h, "{{") {
						require.Contains(t, svc.Secrets, h, "a step's literal header is a secret of its service")
					}
				}
			case registry.KindMock:
				require.Nil(t, st.Request)
			}
		}
		for _, st := range feat.Steps {
			for _, n := range st.Needs {
				require.True(t, seen[n], "step %s.%s needs unknown %q", name, st.Name, n)
			}
		}
		require.NoError(t, acyclic(feat), name)
	}
}

func checkRetry(t *testing.T, r registry.RetryPolicy) {
	t.Helper()
	require.GreaterOrEqual(t, r.MaxAttempts, 1)
	require.GreaterOrEqual(t, r.InitialBackoff, time.Duration(0))
	require.LessOrEqual(t, r.InitialBackoff, r.MaxBackoff)
}

func checkMock(t *testing.T, m registry.MockSpec) {
	t.Helper()
	require.GreaterOrEqual(t, m.Latency, time.Duration(0))
	require.GreaterOrEqual(t, m.FailTimes, 0)
	require.True(t, m.FailureRate >= 0 && m.FailureRate <= 1, "failure rate %v", m.FailureRate)
	require.Equal(t, m.Output == nil, m.OutputTemplate == nil)
}

// acyclic checks the steps of f form a DAG by removing steps whose needs are all removed.
func acyclic(f *registry.Feature) error {
	done := map[string]bool{}
	for progress := true; progress; {
		progress = false
		for _, s := range f.Steps {
			if done[s.Name] {
				continue
			}
			ready := true
			for _, n := range s.Needs {
				ready = ready && done[n]
			}
			if ready {
				done[s.Name], progress = true, true
			}
		}
	}
	if len(done) != len(f.Steps) {
		return fmt.Errorf("steps in a cycle: %d of %d ordered", len(done), len(f.Steps))
	}
	return nil
}

// Aliases are expanded each time they are used, so a file of a few hundred bytes can ask the loader
// to build billions of nodes, and an anchor whose value holds an alias to itself asks for infinitely
// many (the loader used to die of a stack overflow on those). Both are errors now, returned fast.
func TestParseAliasBombs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, doc, want string }{
		{"alias inside its anchor (list)", "services: {s: {kind: mock, output: &a [*a]}}\nfeatures: {f: {steps: [{name: a, service: s}]}}\n", "anchor &a contains an alias to itself"},
		{"merge of itself", "services: &s {<<: *s}\n", "anchor &s contains an alias to itself"},
		{"service holding itself", "services: {s: &m {kind: mock, output: *m}}\n", "anchor &m contains an alias to itself"},
		{"billion laughs", billionLaughs(), "aliases expand the file by more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			reg, err := registry.Parse("r.yaml", []byte(tc.doc), fuzzLookup)
			require.Nil(t, reg)
			require.ErrorContains(t, err, tc.want)
			require.Less(t, time.Since(start), 5*time.Second)
		})
	}
	// Anchors used as intended still load, even many references to a sizeable value.
	var b strings.Builder
	b.WriteString("x-out: &out {a: [1, 2, 3, 4, 5, 6, 7, 8], b: {c: d, e: f}}\nservices:\n")
	for i := range 500 {
		fmt.Fprintf(&b, "  s%d: {kind: mock, output: *out}\n", i)
	}
	reg, err := registry.Parse("r.yaml", []byte(b.String()), fuzzLookup)
	require.NoError(t, err)
	require.Len(t, reg.Services, 500)
	require.Equal(t, map[string]any{"a": []any{1, 2, 3, 4, 5, 6, 7, 8}, "b": map[string]any{"c": "d", "e": "f"}}, reg.Services["s499"].Mock.Output)
}

// A key (or a value a message quotes) with a line break split its error over two lines of Parse's
// error, one per line otherwise, and could forge a line (found by FuzzParse: a header named "\n").
func TestErrorsStayOnePerLine(t *testing.T) {
	t.Parallel()
	_, err := registry.Parse("r.yaml", []byte("services:\n  s: {base_url: \"https://x.example\", headers: {\"a\\nr.yaml: forged\": v}}\n"), fuzzLookup)
	require.Error(t, err)
	require.Equal(t, []string{`r.yaml: services.s.headers.a\nr.yaml: forged: invalid header name "a\nr.yaml: forged"`}, strings.Split(err.Error(), "\n"))
}

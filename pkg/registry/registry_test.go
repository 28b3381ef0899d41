package registry_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

const (
	testFile = "deploy/registry.yaml"
	apiKey   = "sk-test-0123456789abcdef"
	baseURL  = "https://llm.example.com/v1/"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

var contractEnv = envOf(map[string]string{"LLM_BASE_URL": baseURL, "LLM_API_KEY": apiKey})

func loadContract(t *testing.T) *registry.Registry {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "contract.yaml"))
	require.NoError(t, err)
	reg, err := registry.Parse(testFile, data, contractEnv)
	require.NoError(t, err)
	return reg
}

func TestContractExample(t *testing.T) {
	t.Parallel()

	reg := loadContract(t)
	require.Equal(t, testFile, reg.Path)
	require.Equal(t, []string{"business_plan"}, reg.FeatureNames())
	require.Equal(t, []string{"default", "heavy", "medium"}, reg.Queues())

	llm, ok := reg.Service("llm")
	require.True(t, ok)
	require.Equal(t, "llm", llm.Name)
	require.Equal(t, registry.KindHTTP, llm.Kind)
	require.Equal(t, "https://llm.example.com/v1", llm.BaseURL, "trailing slash trimmed")
	require.Equal(t, map[string]string{"Authorization": "Bearer " + apiKey}, llm.Headers)
	require.Equal(t, 60*time.Second, llm.Timeout)
	require.Equal(t, 8, llm.MaxConcurrency)
	require.Equal(t, 30*time.Second, llm.LeaseTTL)
	require.Equal(t, []registry.Budget{{Kind: registry.BudgetRequests, Limit: 60, Per: time.Minute, Path: "services.llm.rate_limit"}}, llm.RateLimits)
	require.Equal(t, registry.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Second, MaxBackoff: 2 * time.Minute}, llm.Retry)
	require.Equal(t, &registry.HealthProbe{Method: "GET", Path: "/models"}, llm.Health)
	require.Equal(t, int64(registry.DefaultMaxResponseBytes), llm.MaxResponseBytes)
	require.ElementsMatch(t, []string{"Bearer " + apiKey, apiKey, baseURL}, llm.Secrets)
	require.Equal(t, "Bearer "+apiKey, llm.Secrets[0], "longest first")

	sim, ok := reg.Service("sim")
	require.True(t, ok)
	require.Equal(t, registry.KindMock, sim.Kind)
	require.Equal(t, 50*time.Millisecond, sim.Mock.Latency)
	require.Equal(t, 0, sim.Mock.FailTimes)
	require.Equal(t, 4, sim.MaxConcurrency)
	require.Equal(t, registry.DefaultTimeout, sim.Timeout)
	require.Equal(t, registry.DefaultLeaseTTL, sim.LeaseTTL)
	require.Empty(t, sim.RateLimits)
	require.Nil(t, sim.Health)
	require.Equal(t, registry.RetryPolicy{MaxAttempts: registry.DefaultMaxAttempts, InitialBackoff: registry.DefaultInitialBackoff, MaxBackoff: registry.DefaultMaxBackoff}, sim.Retry)
	require.Empty(t, sim.Secrets)

	_, ok = reg.Service("nope")
	require.False(t, ok)

	f, ok := reg.Feature("business_plan")
	require.True(t, ok)
	require.Len(t, f.Steps, 3)
	require.NotNil(t, f.Input)
	require.Equal(t, "business_name", f.Input.Validate(map[string]any{})[0].Field)
	require.Empty(t, f.Input.Validate(map[string]any{"business_name": "Acme"}))
	b, err := json.Marshal(f.Input)
	require.NoError(t, err)
	require.JSONEq(t, `{"type":"object","required":["business_name"],"properties":{"business_name":{"type":"string","minLength":1,"maxLength":200}}}`, string(b))

	mr, ok := f.Step("market_research")
	require.True(t, ok)
	require.Equal(t, "llm", mr.Service)
	require.Equal(t, "heavy", mr.Queue)
	require.Empty(t, mr.Needs)
	require.Equal(t, 60*time.Second, mr.Timeout)
	require.Equal(t, llm.Retry, mr.Retry)
	require.Equal(t, "POST", mr.Request.Method)
	require.Equal(t, "/chat/completions", mr.Request.Path)
	body, err := mr.Request.BodyTemplate.Execute(render.Data{Input: map[string]any{"business_name": `Bob's "Café" 🚀`}})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"model": "small", "messages": []any{map[string]any{"role": "user", "content": `Market for Bob's "Café" 🚀`}}}, body)
	p, err := mr.Request.PathTemplate.ExecuteString(render.Data{})
	require.NoError(t, err)
	require.Equal(t, "/chat/completions", p)

	fin, ok := f.Step("financials")
	require.True(t, ok)
	require.Equal(t, "medium", fin.Queue)
	require.Equal(t, []string{"market_research"}, fin.Needs)
	require.Equal(t, "POST", fin.Request.Method, "default request of an http step")
	require.Equal(t, "/", fin.Request.Path)
	body, err = fin.Request.BodyTemplate.Execute(render.Data{})
	require.NoError(t, err)
	require.Equal(t, map[string]any{}, body)

	sum, ok := f.Step("summary")
	require.True(t, ok)
	require.Equal(t, registry.DefaultQueue, sum.Queue)
	require.Nil(t, sum.Request)
	require.Equal(t, 50*time.Millisecond, sum.Mock.Latency)
	require.Equal(t, registry.DefaultTimeout, sum.Timeout)

	_, ok = f.Step("nope")
	require.False(t, ok)
}

func TestLoad(t *testing.T) {
	t.Setenv("LLM_BASE_URL", baseURL)
	t.Setenv("LLM_API_KEY", apiKey)

	reg, err := registry.Load(filepath.Join("testdata", "contract.yaml"))
	require.NoError(t, err)
	require.Equal(t, "https://llm.example.com/v1", reg.Services["llm"].BaseURL)

	_, err = registry.Load(filepath.Join("testdata", "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestDownstreamAndRoots(t *testing.T) {
	t.Parallel()

	// d is listed before what it needs: file order must not matter.
	reg := parse(t, `
services: {m: {kind: mock}}
features:
  f:
    steps:
      - {name: d, service: m, needs: [b, c]}
      - {name: a, service: m}
      - {name: b, service: m, needs: [a]}
      - {name: c, service: m, needs: [b]}
      - {name: e, service: m}
      - {name: g, service: m, needs: [e, d]}
`, nil)
	f := reg.Features["f"]
	names := func(steps []*registry.Step) []string {
		var out []string
		for _, s := range steps {
			out = append(out, s.Name)
		}
		return out
	}
	require.Equal(t, []string{"a", "e"}, names(roots(f)))
	require.Equal(t, []string{"d", "b", "c", "g"}, f.Downstream("a"))
	require.Equal(t, []string{"d", "c", "g"}, f.Downstream("b"))
	require.Equal(t, []string{"g"}, f.Downstream("e"))
	require.Empty(t, f.Downstream("g"))
	require.Equal(t, []string{"d", "c"}, dependents(f, "b"))
}

func parse(t *testing.T, src string, env map[string]string) *registry.Registry {
	t.Helper()
	reg, err := registry.Parse(testFile, []byte(src), envOf(env))
	require.NoError(t, err)
	return reg
}

func TestExpansion(t *testing.T) {
	t.Parallel()

	reg := parse(t, `
services:
  api:
    base_url: ${BASE:-http://localhost:8080/}
    headers:
      X-Key: ${KEY}
      X-Price: "$$5 and ${EMPTY:-fallback-value}"
      X-Set-Empty: "[${EMPTY}]"
      Accept: application/json
      X-Short: "on"
    max_concurrency: ${MAXC:-8}
    timeout: ${TIMEOUT}
    retry: {max_attempts: "${ATTEMPTS}"}
features:
  f:
    steps:
      - name: s
        service: api
        request:
          path: /x/$id
          headers: {X-Step: "${STEP_SECRET}", X-Job: "{{ .job.id }}"}
          body:
            n: ${N}
            quoted: "${N}"
            regex: "^a$"
            tmpl: "{{ $x := 1 }}{{ $x }}"
`, map[string]string{"KEY": "key-from-env", "TIMEOUT": "45s", "EMPTY": "", "ATTEMPTS": "7", "STEP_SECRET": "step-secret", "N": "12"})

	api := reg.Services["api"]
	require.Equal(t, "http://localhost:8080", api.BaseURL)
	require.Equal(t, map[string]string{
		"X-Key": "key-from-env", "X-Price": "$5 and fallback-value", "X-Set-Empty": "[]", "Accept": "application/json", "X-Short": "on",
	}, api.Headers)
	require.Equal(t, 8, api.MaxConcurrency)
	require.Equal(t, 45*time.Second, api.Timeout)
	require.Equal(t, 7, api.Retry.MaxAttempts)

	// Expanded values and header values (literal too), but nothing shorter than 4 bytes.
	// Defaults written in the file are not secrets; header values always are.
	require.ElementsMatch(t, []string{
		"key-from-env", "$5 and fallback-value", "application/json", "step-secret",
	}, api.Secrets)
	for i := 1; i < len(api.Secrets); i++ {
		require.GreaterOrEqual(t, len(api.Secrets[i-1]), len(api.Secrets[i]))
	}

	st := reg.Features["f"].Steps[0]
	require.Equal(t, "/x/$id", st.Request.Path)
	require.Equal(t, map[string]any{"n": 12, "quoted": "12", "regex": "^a$", "tmpl": "{{ $x := 1 }}{{ $x }}"}, st.Request.Body)
	h, err := st.Request.HeaderTemplates["X-Job"].ExecuteString(render.Data{JobID: "job-7"})
	require.NoError(t, err)
	require.Equal(t, "job-7", h)
}

func TestRedact(t *testing.T) {
	t.Parallel()

	reg := parse(t, `
services:
  api:
    base_url: https://api.example.com
    headers: {Authorization: "Bearer ${KEY}"}
`, map[string]string{"KEY": "abcd1234"})
	api := reg.Services["api"]
	require.Equal(t, "auth [REDACTED] then [REDACTED] end", api.Redact("auth Bearer abcd1234 then abcd1234 end"))
	require.Equal(t, "nothing secret", api.Redact("nothing secret"))
	require.Equal(t, "x [REDACTED]", redactAll(reg, "x abcd1234"))

	svc := &registry.Service{Secrets: []string{"abc", "abcdef"}}
	require.Equal(t, "[REDACTED]-[REDACTED]", svc.Redact("abcdef-abc"))
}

func TestSecretsNeverInErrors(t *testing.T) {
	t.Parallel()

	secret := "super-secret-value-42"
	_, err := registry.Parse(testFile, []byte(`
services:
  api:
    base_url: "${URL}"
    headers: {Authorization: "${KEY}", "bad name": "${KEY}"}
    timeout: ${KEY}
    max_concurrency: ${KEY}
features:
  f:
    steps:
      - name: s
        service: api
        request:
          path: "${KEY}"
          method: "${KEY}"
          headers: {X-T: "{{ ${KEY} }}"}
`), envOf(map[string]string{"URL": "ftp://" + secret, "KEY": secret}))
	require.Error(t, err)
	msg := err.Error()
	require.NotContains(t, msg, secret)
	require.Contains(t, msg, `services.api.base_url: expected an absolute http or https URL such as "https://api.example.com/v1", got "${URL}" (expanded value not shown)`)
	require.Contains(t, msg, `services.api.timeout: invalid duration "${KEY}" (expanded value not shown)`)
	require.Contains(t, msg, `services.api.max_concurrency: expected an integer, got "${KEY}" (expanded value not shown)`)
	require.Contains(t, msg, `features.f.steps[0].request.path: must start with "/"`)
	require.Contains(t, msg, `features.f.steps[0].request.method: unknown HTTP method "${KEY}"`)
	require.Contains(t, msg, `features.f.steps[0].request.headers.X-T: template: `)
}

func TestErrors(t *testing.T) {
	t.Parallel()

	const svc = "services:\n  llm: {base_url: \"https://x.example\"}\n  sim: {kind: mock}\n"
	tests := []struct {
		name string
		src  string
		env  map[string]string
		want []string // each a full line of the error, or a prefix of it when it ends with "..."
	}{
		{
			name: "unknown field in service",
			src:  "services: {llm: {base_url: \"https://x.example\", timout: 5s}}",
			want: []string{"services.llm.timout: unknown field (expected one of: kind, base_url, headers, timeout, max_concurrency, lease_ttl, rate_limit, retry, health, latency, fail_times, failure_rate, output, max_response_bytes, adaptive, budget_headers, max_concurrency_per_tenant, rate_limits, concurrency_key, max_concurrency_per_key)"},
		},
		{
			name: "unknown top-level field",
			src:  "service: {}",
			want: []string{"service: unknown field (expected one of: services, features)"},
		},
		{
			name: "unknown field in step, request, retry, rate_limit, health and feature",
			src: svc + `features:
  f:
    descripton: x
    steps:
      - {name: a, service: llm, queu: heavy, request: {bdy: {}}, retry: {attempts: 3}}
services2: {}
`,
			want: []string{
				"features.f.descripton: unknown field (expected one of: description, input, steps)",
				"features.f.steps[0].queu: unknown field ...",
				"features.f.steps[0].request.bdy: unknown field (expected one of: method, path, query, headers, body)",
				"features.f.steps[0].retry.attempts: unknown field (expected one of: max_attempts, initial_backoff, max_backoff)",
				"services2: unknown field ...",
			},
		},
		{
			name: "unknown service",
			src:  svc + "features: {f: {steps: [{name: a, service: lm}]}}",
			want: []string{`features.f.steps[0].service: unknown service "lm" (services: llm, sim)`},
		},
		{
			name: "unknown needs",
			src: svc + `features:
  business_plan:
    steps:
      - {name: market_research, service: llm}
      - {name: financials, service: llm, needs: [foo]}
      - {name: summary, service: sim, needs: [market_research, financials]}
`,
			want: []string{`features.business_plan.steps[1].needs: unknown step "foo" (steps of business_plan: market_research, financials, summary)`},
		},
		{
			name: "needs listed twice",
			src:  svc + "features: {f: {steps: [{name: a, service: sim}, {name: b, service: sim, needs: [a, a]}]}}",
			want: []string{`features.f.steps[1].needs: "a" is listed twice`},
		},
		{
			name: "cycle",
			src: svc + `features:
  f:
    steps:
      - {name: a, service: sim, needs: [b]}
      - {name: b, service: sim, needs: [a]}
      - {name: c, service: sim, needs: [c]}
`,
			want: []string{
				"features.f.steps[1].needs: dependency cycle: a -> b -> a (each step needs the next)",
				"features.f.steps[2].needs: dependency cycle: c -> c (each step needs the next)",
			},
		},
		{
			name: "duplicate step",
			src:  svc + "features: {f: {steps: [{name: a, service: sim}, {name: b, service: sim}, {name: a, service: llm}]}}",
			want: []string{`features.f.steps[2].name: duplicate step "a" (also steps[0])`},
		},
		{
			name: "bad duration",
			src:  "services: {llm: {base_url: \"https://x.example\", timeout: 60x}}",
			want: []string{`services.llm.timeout: invalid duration "60x" (expected Go syntax such as "500ms", "30s", "1m30s")`},
		},
		{
			name: "duration without unit",
			src:  "services: {llm: {base_url: \"https://x.example\", lease_ttl: 30}}",
			want: []string{`services.llm.lease_ttl: invalid duration 30: a number needs a unit (e.g. "30s" or "30ms")`},
		},
		{
			name: "zero and negative durations",
			src:  "services: {llm: {base_url: \"https://x.example\", timeout: 0s, retry: {initial_backoff: -1s}}}",
			want: []string{
				`services.llm.timeout: must be positive, got "0s"`,
				`services.llm.retry.initial_backoff: must not be negative, got "-1s"`,
			},
		},
		{
			name: "missing variable",
			src:  "services: {llm: {base_url: \"${LLM_BASE_URL}\"}}",
			want: []string{"services.llm.base_url: environment variable LLM_BASE_URL is not set (set it, or write ${LLM_BASE_URL:-default})"},
		},
		{
			name: "bad variable reference",
			src:  "services: {llm: {base_url: \"${1X}\", headers: {A: \"${OPEN\"}}}",
			want: []string{
				"services.llm.base_url: invalid variable reference ${1X} (expected ${NAME} or ${NAME:-default})",
				"services.llm.headers.A: unterminated ${ (write $$ for a literal $)",
			},
		},
		{
			name: "wrong type",
			src:  "services: {llm: {base_url: \"https://x.example\", max_concurrency: \"abc\", max_response_bytes: 1.5, headers: [a]}}",
			want: []string{
				`services.llm.headers: expected a mapping, got a list`,
				`services.llm.max_concurrency: expected an integer, got "abc"`,
				`services.llm.max_response_bytes: expected an integer, got 1.5`,
			},
		},
		{
			name: "wrong type of sections",
			src:  "services: [a]\nfeatures: {f: {steps: {name: a}}, g: [x]}",
			want: []string{
				"services: expected a mapping, got a list",
				"features.f.steps: expected a list of at least one step, got a mapping",
				"features.g: expected a mapping, got a list",
			},
		},
		{
			name: "bad kind",
			src:  "services: {llm: {kind: grpc, base_url: \"https://x.example\"}}",
			want: []string{`services.llm.kind: unknown kind "grpc" (expected http or mock)`},
		},
		{
			name: "missing kind",
			src:  "services: {llm: {timeout: 1s}}",
			want: []string{"services.llm.kind: required (http with base_url, or mock)"},
		},
		{
			name: "missing required fields",
			src: `services: {llm: {kind: http}}
features:
  f: {steps: [{service: llm}, {name: b}]}
  g: {description: nothing}
`,
			want: []string{
				"services.llm.base_url: required for a http service",
				"features.f.steps[0].name: required",
				"features.f.steps[1].service: required",
				"features.g.steps: required (a list of at least one step)",
			},
		},
		{
			name: "bad queue name",
			src:  svc + "features: {f: {steps: [{name: a, service: sim, queue: 'a b'}, {name: b, service: sim, queue: 'x:y'}, {name: c, service: sim, queue: '{q}'}, {name: d, service: sim, queue: ''}]}}",
			want: []string{
				`features.f.steps[0].queue: invalid queue name "a b" (must be non-empty, without spaces, ':' or braces)`,
				`features.f.steps[1].queue: invalid queue name "x:y" ...`,
				`features.f.steps[2].queue: invalid queue name "{q}" ...`,
				`features.f.steps[3].queue: invalid queue name "" ...`,
			},
		},
		{
			name: "negative numbers",
			src:  "services: {llm: {base_url: \"https://x.example\", max_concurrency: -1, max_response_bytes: 0}, sim: {kind: mock, fail_times: -2}}",
			want: []string{
				"services.llm.max_concurrency: must be between 0 and 2147483647, got -1",
				"services.llm.max_response_bytes: must be positive, got 0",
				"services.sim.fail_times: must be between 0 and 2147483647, got -2",
			},
		},
		{
			name: "failure_rate outside [0,1]",
			src:  svc + "  m2: {kind: mock, failure_rate: 1.5}\nfeatures: {f: {steps: [{name: a, service: sim, failure_rate: -0.1}, {name: b, service: sim, failure_rate: x}]}}",
			want: []string{
				"services.m2.failure_rate: must be between 0 and 1, got 1.5",
				"features.f.steps[0].failure_rate: must be between 0 and 1, got -0.1",
				`features.f.steps[1].failure_rate: expected a number, got "x"`,
			},
		},
		{
			name: "invalid base_url",
			src:  "services: {a: {base_url: \"ftp://x.example\"}, b: {base_url: \"/relative\"}, c: {base_url: \"https://\"}}",
			want: []string{
				`services.a.base_url: expected an absolute http or https URL such as "https://api.example.com/v1", got "ftp://x.example"`,
				`services.b.base_url: expected an absolute http or https URL ...`,
				`services.c.base_url: expected an absolute http or https URL ...`,
			},
		},
		{
			name: "bad retry",
			src: svc + `  s2: {base_url: "https://y.example", retry: {max_attempts: 0, initial_backoff: 5m}}
features: {f: {steps: [{name: a, service: llm, retry: {initial_backoff: 10s, max_backoff: 1s}}]}}
`,
			want: []string{
				"services.s2.retry.max_attempts: must be at least 1, got 0",
				"services.s2.retry.initial_backoff: must not be greater than max_backoff (5m0s > 1m0s)",
				"features.f.steps[0].retry.initial_backoff: must not be greater than max_backoff (10s > 1s)",
			},
		},
		{
			name: "bad rate_limit",
			src: `services:
  a: {base_url: "https://x.example", rate_limit: {requests: 0, per: 1m}}
  b: {base_url: "https://x.example", rate_limit: {per: 0s}}
  c: {base_url: "https://x.example", rate_limit: 60}
`,
			want: []string{
				"services.a.rate_limit.requests: must be a positive integer, got 0",
				"services.b.rate_limit.requests: required (a positive integer)",
				`services.b.rate_limit.per: must be positive, got "0s"`,
				"services.c.rate_limit: expected a mapping, got 60",
			},
		},
		{
			name: "bad template syntax",
			src: svc + `features:
  f:
    steps:
      - name: a
        service: llm
        request:
          path: "/x/{{ .input.id"
          query: {q: "{{ nofunc }}"}
          body: {messages: [{content: "Market for {{ .input.business_name }"}]}
      - name: b
        service: sim
        output: {text: "{{ end }}"}
`,
			want: []string{
				"features.f.steps[0].request.path: template: ...",
				"features.f.steps[0].request.query.q: template: ...",
				"features.f.steps[0].request.body.messages[0].content: template: ...",
				"features.f.steps[1].output.text: template: ...",
			},
		},
		{
			name: "bad input schema",
			src:  svc + "features: {f: {input: {type: object, properties: {business_name: {type: string, minLenght: 1}}}, steps: [{name: a, service: sim}]}}",
			want: []string{"features.f.input.properties.business_name.minLenght: unknown keyword ..."},
		},
		{
			name: "mock knobs on an http service or step",
			src:  svc + "  h: {base_url: \"https://x.example\", latency: 1s}\nfeatures: {f: {steps: [{name: a, service: llm, fail_times: 1, output: {}}]}}",
			want: []string{
				"services.h.latency: only allowed for mock services (this one is http)",
				"features.f.steps[0].fail_times: only allowed for steps of mock services (service llm is http)",
				"features.f.steps[0].output: only allowed for steps of mock services (service llm is http)",
			},
		},
		{
			name: "http settings on a mock service or step",
			src:  "services: {m: {kind: mock, base_url: \"https://x.example\", headers: {A: b}}}\nfeatures: {f: {steps: [{name: a, service: m, request: {path: /x}}]}}",
			want: []string{
				"services.m.base_url: not allowed for a mock service (only for http)",
				"services.m.headers: not allowed for a mock service (only for http)",
				"features.f.steps[0].request: only allowed for steps of http services (service m is mock)",
			},
		},
		{
			name: "bad request path and method",
			src: svc + `features:
  f:
    steps:
      - {name: a, service: llm, request: {path: "https://evil.example/x"}}
      - {name: b, service: llm, request: {path: "//evil.example/x"}}
      - {name: c, service: llm, request: {path: "x"}}
      - {name: d, service: llm, request: {method: FETCH}}
`,
			want: []string{
				`features.f.steps[0].request.path: must start with "/" and be relative to the service's base_url (no "//" prefix, no "://"), got "https://evil.example/x"`,
				`features.f.steps[1].request.path: must start with "/" ...`,
				`features.f.steps[2].request.path: must start with "/" ...`,
				`features.f.steps[3].request.method: unknown HTTP method "FETCH" (expected one of: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)`,
			},
		},
		{
			name: "templated path with a query",
			src: svc + `features:
  f:
    steps:
      - {name: a, service: llm, request: {path: "/items/{{ .input.id }}?full=1"}}
      - {name: b, service: llm, request: {path: "/items?id={{ .input.id }}"}}
      - {name: c, service: llm, request: {path: "/items/{{ if .input.id }}x?y{{ end }}"}}
      - {name: d, service: llm, request: {path: "/search?format=json", query: {q: "{{ .input.q }}"}}}
`,
			want: []string{
				`features.f.steps[0].request.path: a templated path must not contain "?" (put query parameters under query:, one template per value), got "/items/{{ .input.id }}?full=1"`,
				`features.f.steps[1].request.path: a templated path must not contain "?" ...`,
				`features.f.steps[2].request.path: a templated path must not contain "?" ...`,
			},
		},
		{
			name: "steps used by a template must be upstream",
			src: svc + `features:
  f:
    steps:
      - {name: a, service: llm, request: {body: {x: "{{ .steps.nope.output }}"}}}
      - name: b
        service: llm
        needs: [a]
        request: {path: "/x/{{ .steps.b.output.id }}", query: {q: "{{ .steps.c.output }}"}}
      - {name: c, service: llm, needs: [a], request: {headers: {X-D: "{{ index .steps \"d\" \"output\" }}"}}}
      - {name: d, service: sim, needs: [c], output: {v: "{{ $.steps.a.output }} {{ .steps.c.output | json }}"}}
      - {name: e, service: sim, needs: [d], output: "{{ index .steps .input.which }}"}
      - {name: g, service: sim, needs: [a], output: "{{ json .steps }}"}
      - {name: h, service: sim, needs: [a], output: "{{ json . }}"}
      - {name: i, service: sim, needs: [a], output: "{{ define \"t\" }}{{ .steps.b.output }}{{ end }}{{ template \"t\" . }}"}
`,
			want: []string{
				`features.f.steps[0].request.body.x: .steps.nope.output: unknown step "nope" (expected a step upstream of "a" through needs, and it needs none)`,
				`features.f.steps[1].request.path: .steps.b.output.id: step "b" cannot use its own output (expected a step upstream of "b" through needs: a)`,
				`features.f.steps[1].request.query.q: .steps.c.output: step "c" is not upstream of "b" (add it to needs; expected a step upstream of "b" through needs: a)`,
				`features.f.steps[2].request.headers.X-D: index .steps "d" "output": step "d" runs after "c", which it needs (expected a step upstream of "c" through needs: a)`,
				`features.f.steps[4].output: index .steps .input.which: the step must be named in the template (.steps.NAME or index .steps "NAME") so that it can be checked (expected a step upstream of "e" through needs: a, c, d)`,
				`features.f.steps[5].output: .steps: name the step (.steps.NAME.output); the whole .steps would hold the outputs of steps that are not upstream (expected a step upstream of "g" through needs: a)`,
				`features.f.steps[6].output: .: the whole template data holds .steps, the outputs of every step that has succeeded so far; use what you need (.input, .steps.NAME.output, .job.id) instead`,
				`features.f.steps[7].output: .steps.b.output: step "b" is not upstream of "i" (add it to needs; expected a step upstream of "i" through needs: a)`,
			},
		},
		{
			name: "steps used by a service's mock output must be upstream of the steps that use it",
			src: svc + `  echo: {kind: mock, output: {from: "{{ .steps.a.output }}"}}
features:
  f:
    steps:
      - {name: a, service: sim}
      - {name: b, service: echo, needs: [a]}
      - {name: c, service: echo}
      - {name: d, service: echo, output: "{{ .input }}"}
`,
			want: []string{
				`services.echo.output.from: .steps.a.output: step "a" is not upstream of "c" (add it to needs; expected a step upstream of "c" through needs, and it needs none) (this output is echo's, used by features.f.steps[2])`,
			},
		},
		{
			name: "bad health",
			src:  "services: {a: {base_url: \"https://x.example\", health: {method: GET}}, b: {base_url: \"https://x.example\", health: {path: models}}}",
			want: []string{
				"services.a.health.path: required (e.g. /health)",
				`services.b.health.path: must start with "/" ...`,
			},
		},
		{
			name: "bad names",
			src:  "services: {'a b': {kind: mock}}\nfeatures: {'f/g': {steps: [{name: 'x.y', service: 'a b'}]}}",
			want: []string{
				`services.a b: invalid service name "a b" (letters, digits, _ and - only)`,
				`features.f/g: invalid feature name "f/g" (letters, digits, _ and - only)`,
				`features.f/g.steps[0].name: invalid step name "x.y" (letters, digits, _ and - only)`,
			},
		},
		{
			name: "duplicate key",
			src:  "services: {a: {kind: mock, kind: http}}",
			want: []string{"services.a.kind: duplicate key"},
		},
		{
			name: "invalid yaml",
			src:  "services: {a: [}",
			want: []string{"invalid YAML: ..."},
		},
		{
			name: "empty file",
			src:  "",
			want: []string{"empty file (expected a mapping with services and features)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := registry.Parse(testFile, []byte(tt.src), envOf(tt.env))
			require.Error(t, err)
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tt.want {
				found := false
				for _, line := range lines {
					if prefix, ok := strings.CutSuffix(w, "..."); ok {
						found = found || strings.HasPrefix(line, testFile+": "+prefix)
					} else {
						found = found || line == testFile+": "+w
					}
				}
				require.True(t, found, "want line %q in:\n%s", w, err.Error())
			}
			require.Len(t, lines, len(tt.want), err.Error())

			var re *registry.Error
			require.True(t, errors.As(err, &re))
			require.Equal(t, testFile, re.File)
		})
	}
}

func TestStepOverrides(t *testing.T) {
	t.Parallel()

	reg := parse(t, `
services:
  llm:
    base_url: https://x.example
    timeout: 10s
    retry: {max_attempts: 4, initial_backoff: 2s, max_backoff: 30s}
  sim:
    kind: mock
    latency: 1s
    fail_times: 2
    failure_rate: 0.5
    output: {echo: "{{ .input.x }}"}
features:
  f:
    description: overrides
    steps:
      - name: a
        service: llm
        timeout: 5s
        retry: {max_attempts: 9}
        request:
          method: get
          path: "/items/{{ .input.id }}"
          query: {q: "{{ .input.q }}", limit: 10}
          headers: {X-Idem: "{{ .job.id }}"}
      - name: b
        service: sim
        needs: [a]
        latency: 0s
        failure_rate: 0
        output: "{{ .steps.a.output }}"
      - {name: c, service: sim, needs: [b]}
`, nil)
	f := reg.Features["f"]
	require.Equal(t, "overrides", f.Description)
	require.Nil(t, f.Input)

	a, _ := f.Step("a")
	require.Equal(t, 5*time.Second, a.Timeout)
	require.Equal(t, registry.RetryPolicy{MaxAttempts: 9, InitialBackoff: 2 * time.Second, MaxBackoff: 30 * time.Second}, a.Retry)
	require.Equal(t, "GET", a.Request.Method)
	require.Nil(t, a.Request.Body)
	require.Nil(t, a.Request.BodyTemplate)
	require.Equal(t, map[string]string{"q": "{{ .input.q }}", "limit": "10"}, a.Request.Query)
	data := render.Data{Input: map[string]any{"id": 7, "q": "a&b"}, JobID: "j"}
	p, err := a.Request.PathTemplate.ExecuteString(data)
	require.NoError(t, err)
	require.Equal(t, "/items/7", p)
	q, err := a.Request.QueryTemplates["q"].ExecuteString(data)
	require.NoError(t, err)
	require.Equal(t, "a&b", q)
	l, err := a.Request.QueryTemplates["limit"].ExecuteString(data)
	require.NoError(t, err)
	require.Equal(t, "10", l)
	h, err := a.Request.HeaderTemplates["X-Idem"].ExecuteString(data)
	require.NoError(t, err)
	require.Equal(t, "j", h)

	b, _ := f.Step("b")
	require.Equal(t, registry.MockSpec{Latency: 0, FailTimes: 2, FailureRate: 0, Output: "{{ .steps.a.output }}", OutputTemplate: b.Mock.OutputTemplate}, b.Mock)
	out, err := b.Mock.OutputTemplate.Execute(render.Data{Steps: map[string]any{"a": map[string]any{"k": []any{1}}}})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"k": []any{1}}, out)

	c, _ := f.Step("c")
	require.Equal(t, time.Second, c.Mock.Latency)
	require.Equal(t, 0.5, c.Mock.FailureRate)
	out, err = c.Mock.OutputTemplate.Execute(render.Data{Input: map[string]any{"x": "y"}})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"echo": "y"}, out)
}

func TestYAMLAnchorsAndExtensionFields(t *testing.T) {
	t.Parallel()

	reg := parse(t, `
x-retry: &retry {max_attempts: 2, initial_backoff: 1s, max_backoff: 5s}
services:
  a: {base_url: "https://x.example", retry: *retry}
  b: {base_url: "https://y.example", retry: *retry}
  c:
    <<: &common {base_url: "https://z.example", timeout: 7s}
    timeout: 9s
  d: {<<: [*common], max_concurrency: 2}
`, nil)
	require.Equal(t, 9*time.Second, reg.Services["c"].Timeout, "explicit keys win over merged ones")
	require.Equal(t, "https://z.example", reg.Services["c"].BaseURL)
	require.Equal(t, 7*time.Second, reg.Services["d"].Timeout)
	require.Equal(t, 2, reg.Services["d"].MaxConcurrency)
	want := registry.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Second, MaxBackoff: 5 * time.Second}
	require.Equal(t, want, reg.Services["a"].Retry)
	require.Equal(t, want, reg.Services["b"].Retry)
}

func TestSecretsAreCredentialsNotContent(t *testing.T) {
	t.Parallel()
	reg := parse(t, `
services:
  llm:
    base_url: ${LLM_URL:-https://api.example.com/v1}
    headers: {Authorization: "Bearer ${LLM_KEY}"}
features:
  f:
    steps:
      - name: s
        service: llm
        request:
          query: {key: "${QUERY_KEY}"}
          body: {model: "${MODEL}", prompt: "hello"}
`, map[string]string{"LLM_KEY": "sk-secret-value", "QUERY_KEY": "q-secret-value", "MODEL": "gpt-4o-mini"})
	svc, _ := reg.Service("llm")
	require.Contains(t, svc.Secrets, "sk-secret-value")
	require.Contains(t, svc.Secrets, "Bearer sk-secret-value")
	require.Contains(t, svc.Secrets, "q-secret-value")
	require.NotContains(t, svc.Secrets, "gpt-4o-mini", "a model name in the body is content, not a credential")
	require.NotContains(t, svc.Secrets, "https://api.example.com/v1", "a default is written in the file")
	require.Equal(t, `{"model":"gpt-4o-mini","auth":"[REDACTED]"}`, svc.Redact(`{"model":"gpt-4o-mini","auth":"Bearer sk-secret-value"}`))
}

// redactAll replaces the secrets of every service of r in text with "[REDACTED]".
func redactAll(r *registry.Registry, text string) string {
	for _, svc := range r.Services {
		text = svc.Redact(text)
	}
	return text
}

// roots returns the steps of f that need nothing, in file order.
func roots(f *registry.Feature) []*registry.Step {
	var out []*registry.Step
	for _, s := range f.Steps {
		if len(s.Needs) == 0 {
			out = append(out, s)
		}
	}
	return out
}

// dependents returns the names of the steps of f that directly need the step called name.
func dependents(f *registry.Feature, name string) []string {
	var out []string
	for _, s := range f.Steps {
		if slices.Contains(s.Needs, name) {
			out = append(out, s.Name)
		}
	}
	return out
}

func TestStepReferencesUpstream(t *testing.T) {
	t.Parallel()

	// Every way of naming an upstream step loads, a dot rebound by with or range is not the data, and
	// a step may use a step it needs only transitively.
	reg := parse(t, `
services:
  api: {base_url: "https://x.example"}
  sim: {kind: mock, output: {prev: "{{ .steps.a.output }}"}}
features:
  f:
    steps:
      - {name: a, service: sim, output: {id: 7, list: [x]}}
      - {name: b, service: sim, needs: [a]}
      - name: c
        service: api
        needs: [b]
        request:
          method: GET
          path: "/items/{{ .steps.a.output.id }}/{{ (index .steps \"b\").output.prev.id }}"
          query:
            q: "{{ with .steps.a.output }}{{ .id }}{{ end }}{{ range .steps.a.output.list }}{{ .steps }}{{ end }}"
            r: "{{ with .input }}{{ .steps.not_a_step }}{{ end }}{{ if .steps.b.output }}{{ $.steps.b.output.prev.id }}{{ end }}"
          headers: {X-Prev: "{{ index .steps \"a\" \"output\" \"id\" }}"}
          body: {all: "{{ .steps.a.output }}", vars: "{{ $o := .steps.b.output }}{{ $o.prev }}", job: "{{ .job.id }}"}
`, nil)
	c, ok := reg.Features["f"].Step("c")
	require.True(t, ok)
	p, err := c.Request.PathTemplate.ExecuteString(render.Data{Steps: map[string]any{
		"a": map[string]any{"id": 7, "list": []any{"x"}},
		"b": map[string]any{"prev": map[string]any{"id": 8}},
	}})
	require.NoError(t, err)
	require.Equal(t, "/items/7/8", p)
}

func TestShippedRegistriesLoad(t *testing.T) {
	t.Parallel()

	env := envOf(map[string]string{"OPENAI_API_KEY": "sk-test-key"})
	for _, file := range []string{
		"../../deploy/registry.yaml",
		"../../deploy/registry.openai.yaml",
		"../../api/internal/devmode/testdata/registry.yaml",
		"testdata/contract.yaml",
	} {
		data, err := os.ReadFile(filepath.FromSlash(file))
		require.NoError(t, err)
		_, err = registry.Parse(file, data, func(k string) (string, bool) {
			if v, ok := env(k); ok {
				return v, true
			}
			return contractEnv(k)
		})
		require.NoError(t, err, file)
	}
}

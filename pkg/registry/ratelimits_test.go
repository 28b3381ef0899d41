package registry_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

func TestRateLimitsAndKeys(t *testing.T) {
	t.Parallel()
	src := `
services:
  llm:
    base_url: https://llm.example
    rate_limit: {requests: 60, per: 1m}
    rate_limits:
      - {requests: 5, per: 1s}
      - {units: 90000, per: 1m, cost: "{{ .response.usage.total_tokens }}", reserve: "{{ .request.body.max_tokens }}"}
      - {units: 30000, per: 1m, cost: "{{ .response.usage.completion_tokens }}"}
      - {units: 1000, per: 1h, reserve: "${RESERVE}"}
      - {units: 500, per: 1h, cost: 2}
    concurrency_key: "{{ .input.customer_id }}"
    max_concurrency_per_key: 2
  sim:
    kind: mock
    rate_limits: [{units: 100, per: 10s, reserve: "{{ .input.size }}"}]
features:
  f:
    steps:
      - {name: a, service: llm}
      - {name: b, service: llm, needs: [a], concurrency_key: "{{ .steps.a.output.account }}"}
      - {name: c, service: llm, max_concurrency_per_key: 5}
      - {name: d, service: sim}
      - {name: e, service: sim, concurrency_key: "{{ .input.customer_id }}", max_concurrency_per_key: 1}
`
	reg, err := registry.Parse(testFile, []byte(src), envOf(map[string]string{"RESERVE": "7"}))
	require.NoError(t, err)
	llm := reg.Services["llm"]
	require.Len(t, llm.RateLimits, 6)
	rl := llm.RateLimits
	require.Equal(t, registry.Budget{Kind: registry.BudgetRequests, Limit: 60, Per: time.Minute, Path: "services.llm.rate_limit"}, rl[0],
		"rate_limit comes first, with the ID of the former single rate limit")
	require.Equal(t, registry.Budget{Kind: registry.BudgetRequests, Limit: 5, Per: time.Second, ID: "requests-1000", Path: "services.llm.rate_limits[0]"}, rl[1])
	require.Equal(t, registry.BudgetUnits, rl[2].Kind)
	require.EqualValues(t, 90000, rl[2].Limit)
	require.Equal(t, time.Minute, rl[2].Per)
	require.NotNil(t, rl[2].Reserve.Template)
	require.Equal(t, "{{ .request.body.max_tokens }}", rl[2].Reserve.Text)
	got, err := rl[2].Reserve.Template.Execute(map[string]any{"request": map[string]any{"body": map[string]any{"max_tokens": 512}}})
	require.NoError(t, err)
	require.Equal(t, 512, got, "a single action yields the value itself")
	require.NotNil(t, rl[2].Cost.Template)
	require.Regexp(t, `^units-60000-[0-9a-f]{8}$`, rl[2].ID)
	require.Regexp(t, `^units-60000-[0-9a-f]{8}$`, rl[3].ID)
	require.NotEqual(t, rl[2].ID, rl[3].ID, "two units budgets of one window count different things")
	require.False(t, rl[3].Reserve.Set)
	require.Equal(t, registry.Amount{Set: true, Const: 7, Text: "7"}, rl[4].Reserve, "a constant may come from the environment")
	require.True(t, rl[5].Cost.IsConst())
	require.EqualValues(t, 2, rl[5].Cost.Const)

	// The same budgets in another order keep their IDs (the units budgets' state follows them).
	again, err := registry.Parse(testFile, []byte(`
services:
  llm:
    base_url: https://llm.example
    rate_limits:
      - {units: 30000, per: 1m, cost: "{{ .response.usage.completion_tokens }}"}
      - {units: 1, per: 1m, cost: "{{ .response.usage.total_tokens }}", reserve: "{{ .request.body.max_tokens }}"}
features: {f: {steps: [{name: a, service: llm}]}}
`), nil)
	require.NoError(t, err)
	require.Equal(t, rl[3].ID, again.Services["llm"].RateLimits[0].ID)
	require.Equal(t, rl[2].ID, again.Services["llm"].RateLimits[1].ID, "the ID does not depend on the limit")

	require.Equal(t, 2, llm.KeyLimit.Max)
	require.Equal(t, "services.llm.concurrency_key", llm.KeyLimit.Path)
	f := reg.Features["f"]
	key := func(step string, data render.Data) (string, int) {
		st, ok := f.Step(step)
		require.True(t, ok)
		require.NotNil(t, st.KeyLimit, step)
		s, err := st.KeyLimit.Template.ExecuteString(data)
		require.NoError(t, err)
		return s, st.KeyLimit.Max
	}
	in := render.Data{Input: map[string]any{"customer_id": 42}, Steps: map[string]any{"a": map[string]any{"account": "acme"}}}
	k, n := key("a", in)
	require.Equal(t, "42", k, "the service's key, rendered to a string")
	require.Equal(t, 2, n)
	k, n = key("b", in)
	require.Equal(t, "acme", k, "the step's own key, with the service's max")
	require.Equal(t, 2, n)
	k, n = key("c", in)
	require.Equal(t, "42", k, "the service's key, with the step's max")
	require.Equal(t, 5, n)
	d, _ := f.Step("d")
	require.Nil(t, d.KeyLimit)
	k, n = key("e", in)
	require.Equal(t, "42", k, "a mock service's step may have a key")
	require.Equal(t, 1, n)
	require.Len(t, reg.Services["sim"].RateLimits, 1)
	require.NotEmpty(t, reg.Services["sim"].RateLimits[0].ID, "only a requests budget takes the former rate limit's state")
}

func TestRateLimitErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		svc   string
		steps string
		want  []string
	}{
		{"both requests and units", "rate_limits: [{requests: 5, units: 10, per: 1s}]", "",
			[]string{"services.s.rate_limits[0]: set either requests (calls per window) or units (cost units per window), not both"}},
		{"neither requests nor units", "rate_limits: [{per: 1s}]", "",
			[]string{"services.s.rate_limits[0]: required: requests (calls per window) or units (cost units per window)"}},
		{"per missing", "rate_limits: [{requests: 5}]", "",
			[]string{`services.s.rate_limits[0].per: required (a duration such as "1s" or "1m")`}},
		{"per zero", "rate_limits: [{units: 5, per: 0s, reserve: 1}]", "",
			[]string{`services.s.rate_limits[0].per: must be positive, got "0s"`}},
		{"per negative", "rate_limits: [{requests: 5, per: -1s}]", "",
			[]string{`services.s.rate_limits[0].per: must be positive, got "-1s"`}},
		{"per without unit", "rate_limits: [{requests: 5, per: 60}]", "",
			[]string{`services.s.rate_limits[0].per: invalid duration 60: a number needs a unit (e.g. "60s" or "60ms")`}},
		{"per below a millisecond", "rate_limits: [{requests: 5, per: 10us}]", "",
			[]string{`services.s.rate_limits[0].per: must be at least 1ms, got "10us"`}},
		{"requests zero", "rate_limits: [{requests: 0, per: 1s}]", "",
			[]string{"services.s.rate_limits[0].requests: must be a positive integer, got 0"}},
		{"units negative", "rate_limits: [{units: -5, per: 1s, reserve: 1}]", "",
			[]string{"services.s.rate_limits[0].units: must be between 1 and 1125899906842624, got -5"}},
		{"cost and reserve on a requests budget", `rate_limits: [{requests: 5, per: 1s, cost: 1, reserve: "{{ .input.n }}"}]`, "",
			[]string{
				"services.s.rate_limits[0].cost: only for a units budget (a call always costs one request)",
				"services.s.rate_limits[0].reserve: only for a units budget (a call always costs one request)",
			}},
		{"units budget without cost or reserve", "rate_limits: [{units: 100, per: 1s}]", "",
			[]string{"services.s.rate_limits[0]: a units budget needs cost (what a call cost, from its answer: .response) or reserve (what a call takes before it leaves), or both"}},
		{"constant reserve above units", "rate_limits: [{units: 100, per: 1s, reserve: 101}]", "",
			[]string{"services.s.rate_limits[0].reserve: 101 is more than the budget's 100 units: no call could ever leave"}},
		{"constant cost above units", "rate_limits: [{units: 100, per: 1s, cost: 500}]", "",
			[]string{"services.s.rate_limits[0].cost: 500 is more than the budget's 100 units: no call could ever leave"}},
		{"negative reserve", "rate_limits: [{units: 100, per: 1s, reserve: -1}]", "",
			[]string{"services.s.rate_limits[0].reserve: must be between 0 and 1125899906842624, got -1"}},
		{"reserve neither a number nor a template", "rate_limits: [{units: 100, per: 1s, reserve: lots}]", "",
			[]string{`services.s.rate_limits[0].reserve: expected a non-negative integer or a template such as "{{ .request.body.max_tokens }}", got "lots"`}},
		{"reserve a float", "rate_limits: [{units: 100, per: 1s, reserve: 1.5}]", "",
			[]string{`services.s.rate_limits[0].reserve: expected a non-negative integer or a template such as "{{ .request.body.max_tokens }}", got 1.5`}},
		{"bad cost template", `rate_limits: [{units: 100, per: 1s, cost: "{{ .response.usage.total_tokens "}]`, "",
			[]string{"services.s.rate_limits[0].cost: template: template:1: unclosed action"}},
		{"unknown function in reserve", `rate_limits: [{units: 100, per: 1s, reserve: "{{ tokens .request }}"}]`, "",
			[]string{`services.s.rate_limits[0].reserve: template: template:1: function "tokens" not defined`}},
		{"reserve reads the answer", `rate_limits: [{units: 100, per: 1s, reserve: "{{ .response.usage.total_tokens }}"}]`, "",
			[]string{"services.s.rate_limits[0].reserve: unknown template data .response (expected .input, .steps, .job, .step, .request)"}},
		{"cost reads unknown data", `rate_limits: [{units: 100, per: 1s, cost: "{{ .answer.tokens }}"}]`, "",
			[]string{"services.s.rate_limits[0].cost: unknown template data .answer (expected .input, .steps, .job, .step, .request, .response)"}},
		{"reserve names a step that is not upstream", `rate_limits: [{units: 100, per: 1s, reserve: "{{ .steps.b.output.n }}"}]`,
			"{name: a, service: s}, {name: b, service: s, needs: [a]}",
			[]string{
				`services.s.rate_limits[0].reserve: .steps.b.output.n: step "b" runs after "a", which it needs (expected a step upstream of "a" through needs, and it needs none) (this output is s's, used by features.f.steps[0])`,
				`services.s.rate_limits[0].reserve: .steps.b.output.n: step "b" cannot use its own output (expected a step upstream of "b" through needs: a) (this output is s's, used by features.f.steps[1])`,
			}},
		{"duplicate budgets", "rate_limits: [{requests: 5, per: 1s}, {requests: 50, per: 1s}, {units: 9, per: 1s, cost: 1}, {units: 90, per: 1s, cost: 1}]", "",
			[]string{
				"services.s.rate_limits[1]: duplicate budget: same kind, window and amounts as services.s.rate_limits[0] (one budget per kind and window; for two token counts use different cost templates)",
				"services.s.rate_limits[3]: duplicate budget: same kind, window and amounts as services.s.rate_limits[2] (one budget per kind and window; for two token counts use different cost templates)",
			}},
		{"rate_limit repeated in rate_limits", "rate_limit: {requests: 60, per: 1m}, rate_limits: [{requests: 100, per: 1m}]", "",
			[]string{"services.s.rate_limits[0]: duplicate budget: same kind, window and amounts as services.s.rate_limit (one budget per kind and window; for two token counts use different cost templates)"}},
		{"rate_limits not a list", "rate_limits: {requests: 5, per: 1s}", "",
			[]string{"services.s.rate_limits: expected a list of budgets such as {requests: 500, per: 1m} or {units: 90000, per: 1m, cost: ...}, got a mapping"}},
		{"unknown budget field", "rate_limits: [{requests: 5, per: 1s, burst: 2}]", "",
			[]string{"services.s.rate_limits[0].burst: unknown field (expected one of: requests, units, per, cost, reserve)"}},
		{"max_concurrency_per_key without concurrency_key", "max_concurrency_per_key: 2", "",
			[]string{`services.s.max_concurrency_per_key: requires concurrency_key (the template whose value the calls in flight are counted by, e.g. "{{ .input.customer_id }}")`}},
		{"concurrency_key without max_concurrency_per_key", `concurrency_key: "{{ .input.c }}"`, "",
			[]string{"services.s.concurrency_key: requires max_concurrency_per_key (the calls in flight allowed per key value)"}},
		{"max_concurrency_per_key zero", `concurrency_key: "{{ .input.c }}", max_concurrency_per_key: 0`, "",
			[]string{"services.s.max_concurrency_per_key: must be a positive integer, got 0"}},
		{"bad key template", `concurrency_key: "{{ .input.c ", max_concurrency_per_key: 1`, "",
			[]string{"services.s.concurrency_key: template: template:1: unclosed action"}},
		{"constant key", `concurrency_key: acme, max_concurrency_per_key: 1`, "",
			[]string{`services.s.concurrency_key: expected a template such as "{{ .input.customer_id }}" (a constant key would be one more max_concurrency), got "acme"`}},
		{"key reads the request", `concurrency_key: "{{ .request.body.user }}", max_concurrency_per_key: 1`, "",
			[]string{"services.s.concurrency_key: unknown template data .request (expected .input, .steps, .job, .step)"}},
		{"step max without any key", "", "{name: a, service: s, max_concurrency_per_key: 3}",
			[]string{"features.f.steps[0].max_concurrency_per_key: requires concurrency_key (on the step or its service)"}},
		{"step key without any max", "", `{name: a, service: s, concurrency_key: "{{ .input.c }}"}`,
			[]string{"features.f.steps[0].concurrency_key: requires max_concurrency_per_key (on the step or its service)"}},
		{"step key names a step that is not upstream", "", `{name: a, service: s, concurrency_key: "{{ .steps.a.output }}", max_concurrency_per_key: 1}`,
			[]string{`features.f.steps[0].concurrency_key: .steps.a.output: step "a" cannot use its own output (expected a step upstream of "a" through needs, and it needs none)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			steps := tt.steps
			if steps == "" {
				steps = "{name: a, service: s}"
			}
			svc := "base_url: https://x.example"
			if tt.svc != "" {
				svc += ", " + tt.svc
			}
			src := "services:\n  s: {" + svc + "}\nfeatures: {f: {steps: [" + steps + "]}}\n"
			_, err := registry.Parse(testFile, []byte(src), nil)
			require.Error(t, err)
			lines := strings.Split(err.Error(), "\n")
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = testFile + ": " + w
			}
			require.Equal(t, want, lines)
		})
	}
}

// TestContractLimitsBlock loads the service of the contract's "Limits that adapt" block as written
// (its max_concurrency_per_tenant, the fair-sharing key, left out here).
func TestContractLimitsBlock(t *testing.T) {
	t.Parallel()
	src := `
services:
  llm:
    base_url: https://llm.example
    max_concurrency: 12
    adaptive: {min: 1}               # AIMD: halve the effective limit on 429/503/timeout, +1 after a run of successes
    budget_headers: true
    rate_limits:                     # every budget must have room before a call leaves (rate_limit: is one of these)
      - {requests: 500, per: 1m}
      - {units: 90000, per: 1m, cost: "{{ .response.usage.total_tokens }}", reserve: "{{ .request.body.max_tokens }}"}
    concurrency_key: "{{ .input.customer_id }}"    # optional, with max_concurrency_per_key
    max_concurrency_per_key: 2
features:
  f: {steps: [{name: a, service: llm}]}
`
	reg, err := registry.Parse(testFile, []byte(src), nil)
	require.NoError(t, err)
	llm := reg.Services["llm"]
	require.Len(t, llm.RateLimits, 2)
	require.Equal(t, "", llm.RateLimits[0].ID)
	require.EqualValues(t, 500, llm.RateLimits[0].Limit)
	require.EqualValues(t, 90000, llm.RateLimits[1].Limit)
	require.Equal(t, "500 requests per 1m0s", llm.RateLimits[0].Label())
	require.Equal(t, "90000 units per 1m0s", llm.RateLimits[1].Label())
	require.Equal(t, 2, llm.KeyLimit.Max)
	require.Same(t, llm.KeyLimit, reg.Features["f"].Steps[0].KeyLimit, "the step inherits the service's limit per key")
}

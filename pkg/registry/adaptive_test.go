package registry_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
)

func TestAdaptiveLimits(t *testing.T) {
	t.Parallel()
	src := `
services:
  llm:
    base_url: https://llm.example
    max_concurrency: 12
    adaptive: {min: 2}
    max_concurrency_per_tenant: 4
  plain:
    base_url: https://plain.example
  quiet:
    base_url: https://quiet.example
    budget_headers: false
    max_concurrency: 3
    adaptive: {}
  from_env:
    base_url: https://env.example
    budget_headers: ${FOLLOW}
  sim:
    kind: mock
    max_concurrency: 4
    adaptive: {min: 4}
features:
  f: {steps: [{name: a, service: llm}]}
`
	reg, err := registry.Parse(testFile, []byte(src), envOf(map[string]string{"FOLLOW": "false"}))
	require.NoError(t, err)
	llm := reg.Services["llm"]
	require.Equal(t, &registry.Adaptive{Min: 2}, llm.Adaptive)
	require.True(t, llm.BudgetHeaders, "http services follow budget headers by default")
	require.Equal(t, 4, llm.MaxConcurrencyPerTenant)
	require.Zero(t, reg.Services["plain"].MaxConcurrencyPerTenant, "no cap of its own by default")
	plain := reg.Services["plain"]
	require.Nil(t, plain.Adaptive)
	require.True(t, plain.BudgetHeaders)
	quiet := reg.Services["quiet"]
	require.False(t, quiet.BudgetHeaders)
	require.Equal(t, &registry.Adaptive{Min: 1}, quiet.Adaptive, "min defaults to 1")
	require.False(t, reg.Services["from_env"].BudgetHeaders, "a boolean may come from the environment")
	sim := reg.Services["sim"]
	require.False(t, sim.BudgetHeaders, "a mock service has no headers to follow")
	require.Equal(t, &registry.Adaptive{Min: 4}, sim.Adaptive, "min may equal max_concurrency")
}

func TestAdaptiveLimitErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		svc  string
		want []string
	}{
		{"min above max_concurrency", "base_url: https://x.example, max_concurrency: 4, adaptive: {min: 5}",
			[]string{"services.s.adaptive.min: must be between 1 and max_concurrency (4), got 5"}},
		{"min zero", "base_url: https://x.example, max_concurrency: 4, adaptive: {min: 0}",
			[]string{"services.s.adaptive.min: must be between 1 and max_concurrency (4), got 0"}},
		{"min not a number", "base_url: https://x.example, max_concurrency: 4, adaptive: {min: few}",
			[]string{`services.s.adaptive.min: expected an integer, got "few"`}},
		{"without max_concurrency", "base_url: https://x.example, adaptive: {min: 1}",
			[]string{"services.s.adaptive: requires max_concurrency (the limit it starts at and never exceeds)"}},
		{"with max_concurrency 0", "base_url: https://x.example, max_concurrency: 0, adaptive: {}",
			[]string{"services.s.adaptive: requires a positive max_concurrency (the limit it starts at and never exceeds); max_concurrency is 0 (unlimited)"}},
		{"negative min without max_concurrency", "base_url: https://x.example, adaptive: {min: -1}",
			[]string{"services.s.adaptive.min: must be at least 1, got -1"}},
		{"unknown adaptive field", "base_url: https://x.example, max_concurrency: 4, adaptive: {min: 1, max: 8}",
			[]string{"services.s.adaptive.max: unknown field (expected one of: min)"}},
		{"adaptive not a mapping", "base_url: https://x.example, max_concurrency: 4, adaptive: true",
			[]string{"services.s.adaptive: expected a mapping, got true"}},
		{"budget_headers not a boolean", "base_url: https://x.example, budget_headers: yes please",
			[]string{`services.s.budget_headers: expected true or false, got "yes please"`}},
		{"budget_headers on a mock service", "kind: mock, budget_headers: true",
			[]string{"services.s.budget_headers: not allowed for a mock service (only for http)"}},
		{"per-tenant cap without max_concurrency", "kind: mock, max_concurrency_per_tenant: 2",
			[]string{"services.s.max_concurrency_per_tenant: requires a positive max_concurrency (a tenant's share of it)"}},
		{"per-tenant cap above max_concurrency", "kind: mock, max_concurrency: 2, max_concurrency_per_tenant: 3",
			[]string{"services.s.max_concurrency_per_tenant: must not exceed max_concurrency (2), got 3"}},
		{"per-tenant cap zero", "kind: mock, max_concurrency: 2, max_concurrency_per_tenant: 0",
			[]string{"services.s.max_concurrency_per_tenant: must be at least 1, got 0"}},
		{"per-tenant cap not a number", "kind: mock, max_concurrency: 2, max_concurrency_per_tenant: many",
			[]string{`services.s.max_concurrency_per_tenant: expected an integer, got "many"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := "services:\n  s: {" + tt.svc + "}\nfeatures: {f: {steps: [{name: a, service: s}]}}\n"
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

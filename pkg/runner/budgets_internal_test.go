package runner

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

func TestUnitsOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v    any
		want int64
		err  string
	}{
		{v: 512, want: 512},
		{v: int64(7), want: 7},
		{v: 2.2, want: 3},
		{v: json.Number("4096"), want: 4096},
		{v: json.Number("1e3"), want: 1000},
		{v: " 80 ", want: 80},
		{v: 0, want: 0},
		{v: float64(1 << 60), want: limiter.MaxBudgetUnits},
		{v: -1, err: "renders a negative number"},
		{v: "lots", err: "renders a string that is not a number"},
		{v: nil, err: "renders null, want a number"},
		{v: map[string]any{"n": 1}, err: "renders an object, want a number"},
		{v: []any{1}, err: "renders a list, want a number"},
		{v: true, err: "renders a boolean, want a number"},
	} {
		got, err := unitsOf(tc.v)
		if tc.err != "" {
			require.EqualError(t, err, tc.err, "%#v", tc.v)
			continue
		}
		require.NoError(t, err, "%#v", tc.v)
		require.Equal(t, tc.want, got, "%#v", tc.v)
	}
}

func TestReserveOf(t *testing.T) {
	t.Parallel()
	tmpl := func(s string) registry.Amount {
		return registry.Amount{Set: true, Template: render.MustCompile(s), Text: s}
	}
	constant := func(n int64) registry.Amount { return registry.Amount{Set: true, Const: n} }
	data := map[string]any{"request": map[string]any{"body": map[string]any{"max_tokens": json.Number("300")}}}
	for _, tc := range []struct {
		name string
		b    registry.Budget
		want int64
	}{
		{"a constant reserve", registry.Budget{Reserve: constant(5), Cost: tmpl("{{ .response.n }}")}, 5},
		{"a templated reserve", registry.Budget{Reserve: tmpl("{{ .request.body.max_tokens }}")}, 300},
		{"no reserve, a constant cost", registry.Budget{Cost: constant(2)}, 2},
		{"no reserve, a templated cost: one free unit is enough", registry.Budget{Cost: tmpl("{{ .response.n }}")}, 0},
	} {
		tc.b.Kind, tc.b.Limit, tc.b.Per = registry.BudgetUnits, 1000, time.Minute
		got, err := reserveOf(tc.b, data)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.want, got, tc.name)
	}
	_, err := reserveOf(registry.Budget{Reserve: tmpl("{{ .request.body.nope }}")}, data)
	require.ErrorContains(t, err, `map has no entry for key "nope"`)
}

func TestKeySemaphoreHidesTheValue(t *testing.T) {
	t.Parallel()
	a := keySemaphore("llm", "acme}{ with a secret-ish value")
	require.Regexp(t, `^llm#key-[0-9a-f]{24}$`, a)
	require.Equal(t, a, keySemaphore("llm", "acme}{ with a secret-ish value"))
	require.NotEqual(t, a, keySemaphore("llm", "other"))
	require.NotEqual(t, a, keySemaphore("api", "acme}{ with a secret-ish value"), "per service")
}

// TestBudgetBusyComesBackEarly: a step out of budget for long goes back to its queue until a little
// before its budget has room (Asynq may bring it back up to 1 s + PollInterval late), and its note
// says when the room frees and which budget, not when the copy is due.
func TestBudgetBusyComesBackEarly(t *testing.T) {
	t.Parallel()
	r := &Runner{cfg: Config{}.WithDefaults()}
	svc := &registry.Service{Name: "llm", RateLimits: []registry.Budget{
		{Kind: registry.BudgetRequests, Limit: 500, Per: time.Minute, Path: "services.llm.rate_limits[0]"},
		{Kind: registry.BudgetUnits, Limit: 20000, Per: 10 * time.Second, Path: "services.llm.rate_limits[1]"},
	}}
	err := r.budgetBusy(svc, &limiter.Denial{Wait: 9 * time.Second, Budget: 1})
	var b *busyError
	require.ErrorAs(t, err, &b)
	require.GreaterOrEqual(t, b.delay, 7500*time.Millisecond, "9 s - 1 s - PollInterval (500ms), and 100 ms ± 100 % of jitter")
	require.LessOrEqual(t, b.delay, 7700*time.Millisecond)
	require.Equal(t, 9*time.Second, b.ready)
	require.Equal(t, "20000 units per 10s", b.budget)
	require.Contains(t, b.why, "services.llm.rate_limits[1]")
	require.Equal(t, "rate_budget", b.reason)
	require.Equal(t, 1500*time.Millisecond, r.budgetRetry(3*time.Second), "at least half the wait")
}

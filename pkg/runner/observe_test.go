package runner

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/testinfra"
)

// TestObserve: which answers hold a service and which move its adaptive limit.
func TestObserve(t *testing.T) {
	t.Parallel()
	rdb, prefix := testinfra.KeyPrefix(t)
	ctx := testinfra.Context(t, 30*time.Second)
	adapt := limiter.AdaptiveFor(limiter.NewSemaphore(rdb, limiter.Config{Prefix: prefix}))
	r := &Runner{adapt: adapt, cfg: Config{Logger: slog.New(slog.DiscardHandler)}.WithDefaults()}
	svc := func(name string, budget bool) *registry.Service {
		return &registry.Service{Name: name, Kind: registry.KindHTTP, MaxConcurrency: 8, Adaptive: &registry.Adaptive{Min: 1}, BudgetHeaders: budget}
	}
	aimd := &limiter.AIMD{Max: 8, Min: 1}
	state := func(name string) limiter.State {
		st, err := adapt.State(ctx, name, aimd)
		require.NoError(t, err)
		return st
	}
	status := func(code int, retryAfter time.Duration) error {
		return &caller.Error{Class: caller.ClassHTTPStatus, Retryable: true, HTTPStatus: code, RetryAfter: retryAfter}
	}

	// Overloads: 429, 503 and timeouts halve the limit, once per generation.
	a := svc("a", true)
	r.observe(ctx, a, caller.Result{HTTPStatus: 429}, status(429, 0), 0)
	require.Equal(t, 4, state("a").Limit)
	r.observe(ctx, a, caller.Result{HTTPStatus: 503}, status(503, 0), 0)
	require.Equal(t, 4, state("a").Limit, "a call admitted before the decrease")
	r.observe(ctx, a, caller.Result{HTTPStatus: 503}, status(503, 0), 1)
	require.Equal(t, 2, state("a").Limit)
	r.observe(ctx, a, caller.Result{}, &caller.Error{Class: caller.ClassTimeout, Retryable: true}, 2)
	require.Equal(t, 1, state("a").Limit)
	require.Zero(t, state("a").Hold, "no Retry-After, no budget headers: no hold")

	// Other failures move nothing; a success counts toward growth.
	b := svc("b", true)
	for _, err := range []error{status(500, 0), status(404, 0), &caller.Error{Class: caller.ClassNetwork, Retryable: true},
		&caller.Error{Class: caller.ClassCancelled}, errors.New("internal")} {
		r.observe(ctx, b, caller.Result{}, err, 0)
	}
	require.Equal(t, limiter.State{Limit: 8}, state("b"))
	for range 9 {
		r.observe(ctx, a, caller.Result{HTTPStatus: 200}, nil, 3)
	}
	require.Equal(t, 1, state("a").Limit)
	r.observe(ctx, a, caller.Result{HTTPStatus: 200}, nil, 3)
	require.Equal(t, 2, state("a").Limit, "2 failed last: probing it again takes ten successes at 1")

	// A 429 or 503 with Retry-After (the caller reports it in the budget) holds the service; a spent
	// budget on any answer does too, for its reset.
	c := svc("c", true)
	r.observe(ctx, c, caller.Result{HTTPStatus: 429, Budget: &caller.Budget{RetryAfter: 20 * time.Second}}, status(429, 20*time.Second), 0)
	require.InDelta(t, 20*time.Second, state("c").Hold, float64(time.Second))
	require.Equal(t, "retry_after", state("c").HoldReason)
	d := svc("d", true)
	spent := &caller.Budget{Limits: []caller.BudgetLimit{{Name: "tokens", Limit: -1, Remaining: 0, Reset: 30 * time.Second}}, Hold: 30 * time.Second}
	r.observe(ctx, d, caller.Result{HTTPStatus: 200, Budget: spent}, nil, 0)
	require.InDelta(t, 30*time.Second, state("d").Hold, float64(time.Second))
	require.Equal(t, "tokens", state("d").HoldReason)
	e := svc("e", true)
	r.observe(ctx, e, caller.Result{HTTPStatus: 429}, status(429, 20*time.Second), 0)
	require.Zero(t, state("e").Hold, "a delay the caller inferred from reset headers of budgets not spent holds nobody")

	// budget_headers: false never holds the service.
	f := svc("f", false)
	r.observe(ctx, f, caller.Result{HTTPStatus: 429, Budget: &caller.Budget{Hold: time.Minute, RetryAfter: time.Minute}}, status(429, 20*time.Second), 0)
	require.Zero(t, state("f").Hold)
	require.Equal(t, 4, state("f").Limit, "the adaptive limit still follows the 429")

	// A service with neither costs no Redis call: its state stays empty.
	g := &registry.Service{Name: "g", Kind: registry.KindMock}
	r.observe(ctx, g, caller.Result{}, status(429, time.Minute), 0)
	st, err := adapt.State(ctx, "g", nil)
	require.NoError(t, err)
	require.Equal(t, limiter.State{}, st)
	require.False(t, r.heldNow(g))
	require.True(t, r.heldNow(c), "a held service's steps are not continued")
	require.False(t, r.heldNow(b))
}

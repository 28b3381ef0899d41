package limiter

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

func TestAllowBurstThenRetryAfter(t *testing.T) {
	t.Parallel()
	b := setup(t)

	for i := range 5 {
		allowed, retry, err := b.rate.Allow(b.ctx, "api", 5, time.Second)
		require.NoError(t, err)
		require.True(t, allowed, "request %d of the burst", i)
		require.Zero(t, retry)
	}
	allowed, retry, deniedAt, err := b.rate.allow(b.ctx, "api", 5, time.Second)
	require.NoError(t, err)
	require.False(t, allowed)
	require.Positive(t, retry)
	require.LessOrEqual(t, retry, time.Second)

	var allowedAt time.Time
	testinfra.Eventually(t, 3*time.Second, func() bool {
		allowed, _, allowedAt, err = b.rate.allow(b.ctx, "api", 5, time.Second)
		require.NoError(t, err)
		return allowed
	}, "no request allowed after the window passed")
	require.False(t, allowedAt.Before(deniedAt.Add(retry)), "allowed at %s, before retryAfter %s from %s", allowedAt, retry, deniedAt)
}

// TestAllowNeverExceedsWindow hammers one limit from many goroutines and checks, in Redis server time,
// that no window of length per holds more than requests allowed requests.
func TestAllowNeverExceedsWindow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const (
		requests   = 20
		per        = 500 * time.Millisecond
		goroutines = 8
		duration   = 2 * time.Second
	)

	ctx, cancel := context.WithTimeout(b.ctx, duration)
	defer cancel()
	var (
		mu      sync.Mutex
		times   []time.Time
		denials int
		wg      sync.WaitGroup
	)
	for range goroutines {
		wg.Go(func() {
			for ctx.Err() == nil {
				allowed, retry, at, err := b.rate.allow(ctx, "api", requests, per)
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					t.Errorf("allow: %v", err)
					return
				}
				mu.Lock()
				if allowed {
					times = append(times, at)
				} else {
					denials++
					if retry <= 0 || retry > per {
						t.Errorf("retryAfter %s outside (0, %s]", retry, per)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	for i := requests; i < len(times); i++ {
		require.GreaterOrEqual(t, times[i].Sub(times[i-requests]), per,
			"requests %d..%d (%s..%s) fall within one window", i-requests, i, times[i-requests], times[i])
	}
	span := times[len(times)-1].Sub(times[0])
	require.GreaterOrEqual(t, len(times), int(span/per)*requests, "the budget was not used: %d allowed over %s", len(times), span)
	require.Positive(t, denials)
	t.Logf("%d allowed and %d denied over %s", len(times), denials, span)
}

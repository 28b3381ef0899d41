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
		allowed, retry, err := b.rate.allowOne(b.ctx, "api", 5, time.Second)
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

// TestSentMovesTheWindowToTheSendTime admits a full budget, marks one request as sent later, and checks
// that the window is measured from the send: the next admission waits for the sent request's window.
func TestSentMovesTheWindowToTheSendTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	per := 400 * time.Millisecond
	var last Reservation
	for range 2 {
		res, allowed, _, err := b.rate.Reserve(b.ctx, "sent", 2, per)
		require.NoError(t, err)
		require.True(t, allowed)
		last = res
	}
	_, allowed, _, err := b.rate.Reserve(b.ctx, "sent", 2, per)
	require.NoError(t, err)
	require.False(t, allowed, "budget used")

	// Wait until the first admission has nearly left the window, then send the second request.
	var firstFree time.Time
	testinfra.Eventually(t, 3*time.Second, func() bool {
		_, allowed, retry, err := b.rate.Reserve(b.ctx, "sent", 2, per)
		require.NoError(t, err)
		if allowed {
			firstFree = time.Now()
			return true
		}
		if retry < 100*time.Millisecond {
			require.NoError(t, b.rate.Sent(b.ctx, last))
		}
		return false
	}, "a slot frees once the first admission leaves the window")
	// The sent request now occupies the window from its send time: the next one must wait.
	_, allowed, retry, err := b.rate.Reserve(b.ctx, "sent", 2, per)
	require.NoError(t, err)
	require.False(t, allowed, "the second request counts from when it was sent (%s after first free)", time.Since(firstFree))
	require.Greater(t, retry, 200*time.Millisecond)

	// Sent on an unlimited reservation is a no-op.
	res, allowed, _, err := b.rate.Reserve(b.ctx, "free", 0, per)
	require.NoError(t, err)
	require.True(t, allowed)
	require.NoError(t, b.rate.Sent(b.ctx, res))
}

// allowOne takes one request from the fleet-wide budget of `requests` per `per` for name. When it returns
// allowed=false, retryAfter is how long until a request would be allowed. A burst of up to `requests` is
// allowed, and no window of length `per` (by the Redis server clock) ever holds more than `requests`
// allowed requests. requests <= 0 means unlimited: allowOne makes no Redis call.
func (r *RateLimiter) allowOne(ctx context.Context, name string, requests int, per time.Duration) (allowed bool, retryAfter time.Duration, err error) {
	_, allowed, retryAfter, _, err = r.reserve(ctx, name, requests, per)
	return allowed, retryAfter, err
}

package limiter

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

func (b *bundle) adaptive() *Adaptive {
	return AdaptiveFor(NewSemaphore(b.rdb, Config{Prefix: b.prefix}))
}

func TestAIMDHalvesOncePerGenerationAndRegrows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.adaptive()
	aimd := AIMD{Max: 12, Min: 2}

	st, err := a.State(b.ctx, "llm", &aimd)
	require.NoError(t, err)
	require.Equal(t, State{Limit: 12}, st, "the limit starts at max_concurrency")

	// A burst of 429s from calls admitted together halves the limit once.
	limit, decreased, err := a.Overloaded(b.ctx, "llm", aimd, st.Gen)
	require.NoError(t, err)
	require.True(t, decreased)
	require.Equal(t, 6, limit)
	for range 5 {
		limit, decreased, err = a.Overloaded(b.ctx, "llm", aimd, st.Gen)
		require.NoError(t, err)
		require.False(t, decreased, "a call sent before the decrease does not decrease it again")
		require.Equal(t, 6, limit)
	}
	st, err = a.State(b.ctx, "llm", &aimd)
	require.NoError(t, err)
	require.Equal(t, State{Limit: 6, Gen: 1}, st)

	// A call admitted after the decrease that is overloaded too halves it again, not below min.
	limit, decreased, err = a.Overloaded(b.ctx, "llm", aimd, 1)
	require.NoError(t, err)
	require.True(t, decreased)
	require.Equal(t, 3, limit)
	limit, decreased, err = a.Overloaded(b.ctx, "llm", aimd, 2)
	require.NoError(t, err)
	require.True(t, decreased)
	require.Equal(t, 2, limit, "3/2 rounds down, min is 2")
	limit, decreased, err = a.Overloaded(b.ctx, "llm", aimd, 3)
	require.NoError(t, err)
	require.False(t, decreased, "already at min")
	require.Equal(t, 2, limit)

	// Growth: below the limit of the last decrease (3 now), `limit` successes add one...
	succeed := func(n int) int {
		t.Helper()
		var l int
		for range n {
			l, _, err = a.Succeeded(b.ctx, "llm", aimd)
			require.NoError(t, err)
		}
		return l
	}
	// ...but 3 is the level that failed last (the decrease from 3 to 2), so probing it takes 10 × 2.
	require.Equal(t, 2, succeed(19))
	require.Equal(t, 3, succeed(1))
	require.Equal(t, 3, succeed(29))
	require.Equal(t, 4, succeed(1), "10 × 3 successes")

	// A decrease from 4 sets the level to regain: 2 -> 3 takes 2 successes, 3 -> 4 takes 30.
	limit, decreased, err = a.Overloaded(b.ctx, "llm", aimd, 3)
	require.NoError(t, err)
	require.True(t, decreased)
	require.Equal(t, 2, limit)
	require.Equal(t, 2, succeed(1))
	require.Equal(t, 3, succeed(1), "below the failed level, one round of successes")
	require.Equal(t, 3, succeed(29))
	require.Equal(t, 4, succeed(1))
	for want := 5; want <= 12; want++ {
		require.Equal(t, want, succeed(10*(want-1)), "probing above the failed level")
	}
	require.Equal(t, 12, succeed(500), "never above max_concurrency")

	// A smaller max_concurrency in the registry clamps the stored limit.
	st, err = a.State(b.ctx, "llm", &AIMD{Max: 8, Min: 2})
	require.NoError(t, err)
	require.Equal(t, 8, st.Limit)
	// Services are independent.
	st, err = a.State(b.ctx, "other", &aimd)
	require.NoError(t, err)
	require.Equal(t, 12, st.Limit)
	// Without AIMD, State reads only the hold.
	st, err = a.State(b.ctx, "llm", nil)
	require.NoError(t, err)
	require.Equal(t, State{}, st)
}

func TestAIMDMinEqualsMax(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.adaptive()
	aimd := AIMD{Max: 3, Min: 3}
	limit, decreased, err := a.Overloaded(b.ctx, "svc", aimd, 0)
	require.NoError(t, err)
	require.False(t, decreased)
	require.Equal(t, 3, limit)
	limit, grew, err := a.Succeeded(b.ctx, "svc", aimd)
	require.NoError(t, err)
	require.False(t, grew)
	require.Equal(t, 3, limit)
}

func TestHoldExtendsNeverShortens(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.adaptive()

	st, err := a.State(b.ctx, "llm", nil)
	require.NoError(t, err)
	require.Zero(t, st.Hold)

	left, set, err := a.Hold(b.ctx, "llm", 20*time.Second, "requests")
	require.NoError(t, err)
	require.True(t, set)
	require.Equal(t, 20*time.Second, left)
	st, err = a.State(b.ctx, "llm", &AIMD{Max: 4, Min: 1})
	require.NoError(t, err)
	require.InDelta(t, 20*time.Second, st.Hold, float64(time.Second))
	require.Equal(t, "requests", st.HoldReason)
	require.Equal(t, 4, st.Limit)

	left, set, err = a.Hold(b.ctx, "llm", 5*time.Second, "tokens")
	require.NoError(t, err)
	require.False(t, set)
	require.InDelta(t, 20*time.Second, left, float64(time.Second), "a shorter hold keeps the longer one")
	st, err = a.State(b.ctx, "llm", nil)
	require.NoError(t, err)
	require.Equal(t, "requests", st.HoldReason)

	left, set, err = a.Hold(b.ctx, "llm", time.Minute, "tokens")
	require.NoError(t, err)
	require.True(t, set)
	require.Equal(t, time.Minute, left)

	left, set, err = a.Hold(b.ctx, "llm", 0, "x")
	require.NoError(t, err)
	require.False(t, set)
	require.Zero(t, left, "no hold asked for")

	_, _, err = a.Hold(b.ctx, "a}b", time.Second, "x")
	require.Error(t, err)
	_, err = a.State(b.ctx, "", nil)
	require.Error(t, err)
}

// TestAdaptiveOnMiniredis runs the scripts on the embedded mode's miniredis, whose clock is set by
// hand: a hold ends when its time is up.
func TestAdaptiveOnMiniredis(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	a := AdaptiveFor(NewSemaphore(rdb, Config{}))
	aimd := AIMD{Max: 4, Min: 1}

	_, _, err := a.Hold(ctx, "llm", 2*time.Second, "requests")
	require.NoError(t, err)
	st, err := a.State(ctx, "llm", &aimd)
	require.NoError(t, err)
	require.Equal(t, State{Hold: 2 * time.Second, HoldReason: "requests", Limit: 4}, st)
	m.FastForward(1500 * time.Millisecond)
	st, err = a.State(ctx, "llm", &aimd)
	require.NoError(t, err)
	require.Equal(t, 500*time.Millisecond, st.Hold)
	m.FastForward(500 * time.Millisecond)
	st, err = a.State(ctx, "llm", &aimd)
	require.NoError(t, err)
	require.Equal(t, State{Limit: 4}, st, "the hold ended")

	limit, decreased, err := a.Overloaded(ctx, "llm", aimd, 0)
	require.NoError(t, err)
	require.True(t, decreased)
	require.Equal(t, 2, limit)
	limit, grew, err := a.Succeeded(ctx, "llm", aimd)
	require.NoError(t, err)
	require.False(t, grew)
	require.Equal(t, 2, limit)
	limit, grew, err = a.Succeeded(ctx, "llm", aimd)
	require.NoError(t, err)
	require.True(t, grew)
	require.Equal(t, 3, limit)
}

func TestWaitRoomFollowsAnAdaptiveLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.roomWith(t, WaitRoomConfig{ID: "p1", Poll: 20 * time.Millisecond})
	held, err := w.Acquire(b.ctx, "llm", 1, time.Minute, 4)
	require.NoError(t, err)

	// The limit grows while the caller waits: it takes the new slot without anyone releasing one.
	var limit, polls atomic.Int64
	limit.Store(1)
	next := func(context.Context) (int, error) { polls.Add(1); return int(limit.Load()), nil }
	got := make(chan acquired, 1)
	go func() {
		l, err := w.AcquireWith(b.ctx, "llm", 1, time.Minute, 4, WaitOptions{Next: next})
		got <- acquired{l, err}
	}()
	b.waitForWaiters(t, "llm", 1)
	limit.Store(2)
	second := receive(t, got, "waiter after the limit grew")
	n, err := b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 2, n)

	// The limit shrinks: a release that leaves it full does not let the next waiter in.
	limit.Store(1)
	go func() {
		l, err := w.AcquireWith(b.ctx, "llm", 2, time.Minute, 4, WaitOptions{Next: next})
		got <- acquired{l, err}
	}()
	b.waitForWaiters(t, "llm", 1)
	require.NoError(t, b.sem.Release(b.ctx, held))
	after := polls.Load()
	testinfra.Eventually(t, 5*time.Second, func() bool { return polls.Load() >= after+3 }, "the waiter tries again")
	select {
	case r := <-got:
		t.Fatalf("served above the shrunk limit: %+v", r)
	default:
	}
	require.NoError(t, b.sem.Release(b.ctx, second))
	third := receive(t, got, "waiter once the slot under the shrunk limit freed")
	require.NoError(t, b.sem.Release(b.ctx, third))

	// An error from next ends the wait and gives up the place in the queue.
	blocker, err := w.Acquire(b.ctx, "llm", 1, time.Minute, 4)
	require.NoError(t, err)
	stop := errors.New("on hold")
	_, err = w.AcquireWith(b.ctx, "llm", 1, time.Minute, 4, WaitOptions{Next: func(context.Context) (int, error) { return 0, stop }})
	require.ErrorIs(t, err, stop)
	b.waitForWaiters(t, "llm", 0)
	require.NoError(t, b.sem.Release(b.ctx, blocker))
}

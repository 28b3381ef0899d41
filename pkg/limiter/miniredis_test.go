package limiter

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestScriptsRunOnMiniredis proves the scripts use nothing the embedded mode's miniredis lacks. Its
// clock is set by hand, which also makes expiry deterministic here.
func TestScriptsRunOnMiniredis(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	now := time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)
	m.SetTime(now)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	sem := NewSemaphore(rdb, Config{})

	a, err := sem.Acquire(ctx, "llm", 2, time.Second, "a")
	require.NoError(t, err)
	require.Equal(t, now.Add(time.Second).UnixMilli(), a.ExpiresAt.UnixMilli(), "expiry by the server clock")
	require.GreaterOrEqual(t, a.Token, now.UnixMicro(), "tokens start at the server time in µs")
	b, err := sem.Acquire(ctx, "llm", 2, time.Second, "b")
	require.NoError(t, err)
	require.Greater(t, b.Token, a.Token)
	_, err = sem.Acquire(ctx, "llm", 2, time.Second, "c")
	require.ErrorIs(t, err, ErrFull)
	_, err = sem.Acquire(ctx, "llm", 2, time.Second, "d")
	require.ErrorIs(t, err, ErrFull)
	n, err := sem.InUse(ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 2, n)

	a, err = sem.Renew(ctx, a, time.Minute)
	require.NoError(t, err)
	require.Equal(t, now.Add(time.Minute).UnixMilli(), a.ExpiresAt.UnixMilli())

	// b expires; its slot goes to the oldest waiter, c, even when d asks first.
	m.SetTime(now.Add(2 * time.Second))
	_, err = sem.Renew(ctx, b, time.Minute)
	require.ErrorIs(t, err, ErrLeaseLost)
	_, err = sem.Acquire(ctx, "llm", 2, time.Second, "d")
	require.ErrorIs(t, err, ErrFull)
	c, err := sem.Acquire(ctx, "llm", 2, time.Second, "c")
	require.NoError(t, err)
	require.Greater(t, c.Token, b.Token)

	require.NoError(t, sem.Release(ctx, c))
	require.ErrorIs(t, sem.Release(ctx, c), ErrLeaseLost)
	require.NoError(t, sem.Release(ctx, a))
	n, err = sem.InUse(ctx, "llm")
	require.NoError(t, err)
	require.Zero(t, n)

	// A waiter that stops polling for WaiterTTL is pruned and loses its place.
	quick := NewSemaphore(rdb, Config{WaiterTTL: time.Second})
	holder, err := quick.Acquire(ctx, "db", 1, time.Hour, "holder")
	require.NoError(t, err)
	_, err = quick.Acquire(ctx, "db", 1, time.Hour, "gone")
	require.ErrorIs(t, err, ErrFull)
	require.NoError(t, quick.Release(ctx, holder))
	_, err = quick.Acquire(ctx, "db", 1, time.Hour, "live")
	require.ErrorIs(t, err, ErrFull, "gone is still ahead")
	m.SetTime(now.Add(5 * time.Second))
	_, err = quick.Acquire(ctx, "db", 1, time.Hour, "live")
	require.NoError(t, err)

	// A release hands its slot to the first waiter that takes handed slots and still polls; one
	// that stopped polling is dropped on the way.
	m.SetTime(now.Add(10 * time.Second))
	holder, err = quick.Acquire(ctx, "gpu", 1, time.Hour, "")
	require.NoError(t, err)
	for _, wid := range []string{"old", "fresh"} {
		_, _, err = quick.acquire(ctx, "gpu", 1, time.Hour, wid, true)
		require.ErrorIs(t, err, ErrFull)
	}
	m.SetTime(now.Add(10*time.Second + 900*time.Millisecond))
	_, _, err = quick.acquire(ctx, "gpu", 1, time.Hour, "fresh", true)
	require.ErrorIs(t, err, ErrFull)
	m.SetTime(now.Add(11*time.Second + 500*time.Millisecond))
	require.NoError(t, quick.Release(ctx, holder))
	l, handed, err := quick.acquire(ctx, "gpu", 1, time.Hour, "fresh", true)
	require.NoError(t, err)
	require.True(t, handed)
	require.Equal(t, now.Add(11*time.Second+500*time.Millisecond+time.Hour).UnixMilli(), l.ExpiresAt.UnixMilli())
	require.NoError(t, quick.Leave(ctx, "gpu", "old"))
	require.NoError(t, quick.Release(ctx, l))

	rate := NewRateLimiter(rdb, Config{})
	base := now.Add(10 * time.Second)
	m.SetTime(base)
	for range 3 {
		allowed, _, err := rate.allowOne(ctx, "llm", 3, time.Second)
		require.NoError(t, err)
		require.True(t, allowed)
	}
	m.SetTime(base.Add(400 * time.Millisecond))
	allowed, retry, err := rate.allowOne(ctx, "llm", 3, time.Second)
	require.NoError(t, err)
	require.False(t, allowed)
	require.Equal(t, 600*time.Millisecond, retry)
	m.SetTime(base.Add(time.Second))
	allowed, _, err = rate.allowOne(ctx, "llm", 3, time.Second)
	require.NoError(t, err)
	require.True(t, allowed)
}

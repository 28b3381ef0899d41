package limiter

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

func TestAcquireUpToLimitThenFull(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var leases []Lease
	for _, w := range []string{"a", "b", "c"} {
		l, err := b.sem.Acquire(b.ctx, "llm", 3, time.Minute, w)
		require.NoError(t, err)
		require.Equal(t, "llm", l.Name)
		require.NotEmpty(t, l.ID)
		require.Positive(t, l.Token)
		leases = append(leases, l)
	}
	_, err := b.sem.Acquire(b.ctx, "llm", 3, time.Minute, "d")
	require.ErrorIs(t, err, ErrFull)
	n, err := b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 3, n)

	require.NoError(t, b.sem.Release(b.ctx, leases[0]))
	n, err = b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	l, err := b.sem.Acquire(b.ctx, "llm", 3, time.Minute, "d")
	require.NoError(t, err, "the released slot goes to the waiter")
	require.Greater(t, l.Token, leases[2].Token)
}

func TestTokensStrictlyIncrease(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var last int64
	for i := range 30 {
		if i == 20 {
			// An idle semaphore's counter expires; tokens must keep increasing after that.
			require.NoError(t, b.rdb.Del(b.ctx, b.sem.keys("db").fence).Err())
		}
		l, err := b.sem.Acquire(b.ctx, "db", 2, time.Minute, "w")
		require.NoError(t, err)
		require.Greater(t, l.Token, last, "acquisition %d", i)
		last = l.Token
		require.NoError(t, b.sem.Release(b.ctx, l))
	}
}

func TestRenewExtends(t *testing.T) {
	t.Parallel()
	b := setup(t)

	l, err := b.sem.Acquire(b.ctx, "llm", 1, time.Second, "w")
	require.NoError(t, err)
	renewed, err := b.sem.Renew(b.ctx, l, time.Minute)
	require.NoError(t, err)
	require.Equal(t, l.ID, renewed.ID)
	require.Equal(t, l.Token, renewed.Token)
	require.GreaterOrEqual(t, renewed.ExpiresAt.Sub(l.ExpiresAt), 59*time.Second)

	pttl, err := b.rdb.PTTL(b.ctx, b.sem.keys("llm").holders).Result()
	require.NoError(t, err)
	require.Greater(t, pttl, 59*time.Second, "the holders key lives as long as its longest lease")
}

func TestRenewAfterExpiryIsLost(t *testing.T) {
	t.Parallel()
	b := setup(t)

	l, err := b.sem.Acquire(b.ctx, "llm", 1, 50*time.Millisecond, "w")
	require.NoError(t, err)
	testinfra.Eventually(t, 5*time.Second, func() bool {
		n, err := b.sem.InUse(b.ctx, "llm")
		require.NoError(t, err)
		return n == 0
	}, "lease did not expire")

	_, err = b.sem.Renew(b.ctx, l, time.Minute)
	require.ErrorIs(t, err, ErrLeaseLost)
	require.ErrorIs(t, b.sem.Release(b.ctx, l), ErrLeaseLost)
}

func TestReleaseRemovesOnlyItsOwnLease(t *testing.T) {
	t.Parallel()
	b := setup(t)

	a, err := b.sem.Acquire(b.ctx, "llm", 2, time.Minute, "a")
	require.NoError(t, err)
	other, err := b.sem.Acquire(b.ctx, "llm", 2, time.Minute, "b")
	require.NoError(t, err)

	require.NoError(t, b.sem.Release(b.ctx, a))
	require.ErrorIs(t, b.sem.Release(b.ctx, a), ErrLeaseLost, "a second release")
	forged := Lease{Name: "llm", ID: "not-a-lease", Token: other.Token}
	require.ErrorIs(t, b.sem.Release(b.ctx, forged), ErrLeaseLost)

	n, err := b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = b.sem.Renew(b.ctx, other, time.Minute)
	require.NoError(t, err, "the other holder keeps its lease")
}

func TestExpiredLeaseReclaimedByAcquire(t *testing.T) {
	t.Parallel()
	b := setup(t)

	old, err := b.sem.Acquire(b.ctx, "llm", 1, 50*time.Millisecond, "crashed")
	require.NoError(t, err)
	_, err = b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "next")
	require.ErrorIs(t, err, ErrFull)

	var got Lease
	testinfra.Eventually(t, 5*time.Second, func() bool {
		got, err = b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "next")
		if err != nil {
			require.ErrorIs(t, err, ErrFull)
			return false
		}
		return true
	}, "expired lease was not reclaimed")
	require.Greater(t, got.Token, old.Token)
	require.False(t, got.ExpiresAt.Add(-time.Minute).Before(old.ExpiresAt), "granted before the old lease expired")

	_, err = b.sem.Renew(b.ctx, old, time.Minute)
	require.ErrorIs(t, err, ErrLeaseLost)
	require.ErrorIs(t, b.sem.Release(b.ctx, old), ErrLeaseLost)
	n, err := b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func TestFairnessOldestWaiterFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	acquire := func(w string) (Lease, error) { return b.sem.Acquire(b.ctx, "llm", 1, time.Minute, w) }

	holder, err := acquire("holder")
	require.NoError(t, err)
	_, err = acquire("A")
	require.ErrorIs(t, err, ErrFull)
	_, err = acquire("B")
	require.ErrorIs(t, err, ErrFull)

	require.NoError(t, b.sem.Release(b.ctx, holder))
	_, err = acquire("B")
	require.ErrorIs(t, err, ErrFull, "B polls first but A has waited longer")
	_, err = acquire("C")
	require.ErrorIs(t, err, ErrFull, "a newcomer does not jump the queue")
	_, err = b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "")
	require.ErrorIs(t, err, ErrFull, "a caller without waiter ID does not jump the queue")
	a, err := acquire("A")
	require.NoError(t, err)

	require.NoError(t, b.sem.Release(b.ctx, a))
	_, err = acquire("C")
	require.ErrorIs(t, err, ErrFull, "B is ahead of C")
	_, err = acquire("B")
	require.NoError(t, err)
}

func TestWaiterThatStopsPollingLosesItsPlace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sem := NewSemaphore(b.rdb, Config{Prefix: b.prefix, WaiterTTL: 100 * time.Millisecond})

	holder, err := sem.Acquire(b.ctx, "llm", 1, time.Minute, "holder")
	require.NoError(t, err)
	_, err = sem.Acquire(b.ctx, "llm", 1, time.Minute, "gone")
	require.ErrorIs(t, err, ErrFull)
	require.NoError(t, sem.Release(b.ctx, holder))

	start := time.Now()
	testinfra.Eventually(t, 5*time.Second, func() bool {
		_, err := sem.Acquire(b.ctx, "llm", 1, time.Minute, "live")
		if err != nil {
			require.ErrorIs(t, err, ErrFull)
			return false
		}
		return true
	}, "a live waiter stayed behind one that stopped polling")
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond, "the absent waiter kept its place for a while")
}

func TestKeysShareHashTagAndExpire(t *testing.T) {
	t.Parallel()
	b := setup(t)

	_, err := b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "holder")
	require.NoError(t, err)
	_, err = b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "waiter")
	require.ErrorIs(t, err, ErrFull)
	_, _, err = b.rate.allowOne(b.ctx, "llm", 10, time.Second)
	require.NoError(t, err)

	keys, err := b.rdb.Keys(b.ctx, b.prefix+"*").Result()
	require.NoError(t, err)
	require.Len(t, keys, 5, "holders, fence, waiters, seen, rate log: %v", keys)
	for _, k := range keys {
		require.Contains(t, k, "{llm}", "key %s must carry the semaphore's hash tag", k)
		require.True(t, strings.HasPrefix(k, b.prefix+"sem:{llm}:") || k == b.prefix+"rate:{llm}", k)
		pttl, err := b.rdb.PTTL(b.ctx, k).Result()
		require.NoError(t, err)
		require.Positive(t, pttl, "key %s must expire", k)
	}
}

func TestUnlimitedMakesNoRedisCall(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1: any Redis call would fail.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	sem := NewSemaphore(rdb, Config{})
	ctx := context.Background()

	l, err := sem.Acquire(ctx, "llm", 0, time.Minute, "w")
	require.NoError(t, err)
	require.Zero(t, l.Token)
	require.NotEmpty(t, l.ID)
	_, err = sem.Renew(ctx, l, time.Minute)
	require.NoError(t, err)
	require.NoError(t, sem.Release(ctx, l))

	allowed, _, err := NewRateLimiter(rdb, Config{}).allowOne(ctx, "llm", 0, time.Second)
	require.NoError(t, err)
	require.True(t, allowed)
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	b := setup(t)

	_, err := b.sem.Acquire(b.ctx, "", 1, time.Minute, "w")
	require.ErrorContains(t, err, "empty semaphore name")
	_, err = b.sem.Acquire(b.ctx, "llm", 1, 0, "w")
	require.ErrorContains(t, err, "ttl")
	l, err := b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "w")
	require.NoError(t, err)
	_, err = b.sem.Renew(b.ctx, l, 0)
	require.ErrorContains(t, err, "ttl")
	_, _, err = b.rate.allowOne(b.ctx, "llm", 1, 0)
	require.ErrorContains(t, err, "per")
}

func TestWaitersInQueueOrder(t *testing.T) {
	t.Parallel()
	rdb, prefix := testinfra.KeyPrefix(t)
	s := NewSemaphore(rdb, Config{Prefix: prefix})
	ctx := context.Background()
	l, err := s.Acquire(ctx, "w", 1, time.Minute, "holder")
	require.NoError(t, err)
	for _, id := range []string{"first", "second", "third"} {
		_, err := s.Acquire(ctx, "w", 1, time.Minute, id)
		require.ErrorIs(t, err, ErrFull)
	}
	ids, err := s.waiters(ctx, "w", 2)
	require.NoError(t, err)
	require.Equal(t, []string{"first", "second"}, ids)
	require.NoError(t, s.Release(ctx, l))
	_, err = s.Acquire(ctx, "w", 1, time.Minute, "second")
	require.ErrorIs(t, err, ErrFull, "the first waiter is served first")
	_, err = s.Acquire(ctx, "w", 1, time.Minute, "first")
	require.NoError(t, err)
	ids, err = s.waiters(ctx, "w", 5)
	require.NoError(t, err)
	require.Equal(t, []string{"second", "third"}, ids)
}

// waiters returns up to n waiter IDs of semaphore name in queue order (longest waiting first). A
// holder that releases its slot can use it to wake the next waiter instead of letting the slot idle
// until that waiter polls again.
func (s *Semaphore) waiters(ctx context.Context, name string, n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	ids, err := s.rdb.ZRange(ctx, s.keys(name).waiters, 0, int64(n-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("limiter: waiters %q: %w", name, err)
	}
	return ids, nil
}

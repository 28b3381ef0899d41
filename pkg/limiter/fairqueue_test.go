package limiter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// fairBackends runs f on real Redis and on miniredis (the embedded mode's Redis).
func fairBackends(t *testing.T, f func(t *testing.T, ctx context.Context, q *FairQueue, sem *Semaphore)) {
	t.Helper()
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		cfg := Config{Prefix: b.prefix}
		f(t, b.ctx, NewFairQueue(b.rdb, cfg), NewSemaphore(b.rdb, cfg))
	})
	t.Run("miniredis", func(t *testing.T) {
		t.Parallel()
		m := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		f(t, context.Background(), NewFairQueue(rdb, Config{}), NewSemaphore(rdb, Config{}))
	})
}

func park(t *testing.T, ctx context.Context, q *FairQueue, tenant string, weight int, ids ...string) {
	t.Helper()
	for _, id := range ids {
		_, err := q.Park(ctx, "llm", Parked{ID: id, Tenant: tenant, Value: "v-" + id}, weight)
		require.NoError(t, err)
	}
}

func unparkAll(t *testing.T, ctx context.Context, q *FairQueue, n int) []string {
	t.Helper()
	var out []string
	for range n {
		v, err := q.Unpark(ctx, "llm", 1, 0)
		require.NoError(t, err)
		require.Len(t, v, 1)
		out = append(out, v[0].Value)
	}
	return out
}

func TestFairQueueRoundRobinByTenant(t *testing.T) {
	t.Parallel()
	fairBackends(t, func(t *testing.T, ctx context.Context, q *FairQueue, _ *Semaphore) {
		var aIDs []string
		for i := range 6 {
			aIDs = append(aIDs, fmt.Sprintf("a%d", i))
		}
		park(t, ctx, q, "a", 1, aIDs...)
		park(t, ctx, q, "b", 1, "b0", "b1")
		w, err := q.Waiting(ctx, "llm")
		require.NoError(t, err)
		require.Equal(t, map[string]int{"a": 6, "b": 2}, w)

		got := unparkAll(t, ctx, q, 8)
		require.Equal(t, []string{"v-a0", "v-b0", "v-a1", "v-b1", "v-a2", "v-a3", "v-a4", "v-a5"}, got,
			"served round-robin by tenant, FIFO within a tenant")
		require.Empty(t, mustUnpark(t, ctx, q, 3))
		w, err = q.Waiting(ctx, "llm")
		require.NoError(t, err)
		require.Empty(t, w)
	})
}

func TestFairQueueWeights(t *testing.T) {
	t.Parallel()
	fairBackends(t, func(t *testing.T, ctx context.Context, q *FairQueue, _ *Semaphore) {
		for i := range 20 {
			park(t, ctx, q, "acme", 3, fmt.Sprintf("a%d", i))
			park(t, ctx, q, "globex", 1, fmt.Sprintf("g%d", i))
		}
		v := mustUnpark(t, ctx, q, 12)
		require.Len(t, v, 12)
		count := map[byte]int{}
		for _, s := range v {
			count[s[2]]++
		}
		require.Equal(t, 9, count['a'], "weight 3 gets three turns for every one of weight 1: %v", v)
		require.Equal(t, 3, count['g'], "%v", v)
	})
}

func TestFairQueueNewcomerServedWithinARound(t *testing.T) {
	t.Parallel()
	fairBackends(t, func(t *testing.T, ctx context.Context, q *FairQueue, _ *Semaphore) {
		for i := range 50 {
			park(t, ctx, q, "a", 1, fmt.Sprintf("a%d", i))
		}
		got := unparkAll(t, ctx, q, 20)
		require.Equal(t, "v-a19", got[19])
		// b was not waiting while a was served alone: it gets no credit for that time, and no less
		// than the next turn.
		park(t, ctx, q, "b", 1, "b0", "b1")
		require.Equal(t, []string{"v-b0", "v-a20", "v-b1", "v-a21", "v-a22"}, unparkAll(t, ctx, q, 5))
	})
}

func TestFairQueueParkAgainKeepsPlace(t *testing.T) {
	t.Parallel()
	fairBackends(t, func(t *testing.T, ctx context.Context, q *FairQueue, _ *Semaphore) {
		first := time.Now().Add(-time.Minute)
		_, err := q.Park(ctx, "llm", Parked{ID: "a0", Tenant: "a", Since: first, Value: "old"}, 1)
		require.NoError(t, err)
		park(t, ctx, q, "a", 1, "a1", "a2")
		// Parked again while still parked: same place, new value.
		n, err := q.Park(ctx, "llm", Parked{ID: "a0", Tenant: "a", Value: "new"}, 1)
		require.NoError(t, err)
		require.Equal(t, 3, n)
		require.Equal(t, []string{"new"}, mustUnpark(t, ctx, q, 1))
		// Handed out, then parked again with the time it first waited: ahead of the later ones.
		_, err = q.Park(ctx, "llm", Parked{ID: "a0", Tenant: "a", Since: first, Value: "again"}, 1)
		require.NoError(t, err)
		require.Equal(t, []string{"again", "v-a1", "v-a2"}, mustUnpark(t, ctx, q, 5))

		park(t, ctx, q, "a", 1, "a3", "a4")
		ok, err := q.Remove(ctx, "llm", "a", "a3")
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = q.Remove(ctx, "llm", "a", "a3")
		require.NoError(t, err)
		require.False(t, ok)
		require.Equal(t, []string{"v-a4"}, mustUnpark(t, ctx, q, 5))
	})
}

func TestFairQueueSkipsTenantsAtTheirLimit(t *testing.T) {
	t.Parallel()
	fairBackends(t, func(t *testing.T, ctx context.Context, q *FairQueue, sem *Semaphore) {
		park(t, ctx, q, "a", 1, "a0", "a1", "a2")
		park(t, ctx, q, "b", 1, "b0", "b1")
		l, err := sem.Acquire(ctx, TenantSemaphore("llm", "a"), 1, time.Minute, "")
		require.NoError(t, err)
		require.Equal(t, []string{"v-b0", "v-b1"}, mustUnparkCapped(t, ctx, q, 5, 1), "a holds its one slot: only b is served")
		require.NoError(t, sem.Release(ctx, l))
		require.Equal(t, []string{"v-a0"}, mustUnparkCapped(t, ctx, q, 1, 1))
		require.Equal(t, []string{"v-a1", "v-a2"}, mustUnpark(t, ctx, q, 5), "without a tenant limit nobody is skipped")
	})
}

func mustUnpark(t *testing.T, ctx context.Context, q *FairQueue, n int) []string {
	t.Helper()
	return mustUnparkCapped(t, ctx, q, n, 0)
}

func mustUnparkCapped(t *testing.T, ctx context.Context, q *FairQueue, n, perTenant int) []string {
	t.Helper()
	h, err := q.Unpark(ctx, "llm", n, perTenant)
	require.NoError(t, err)
	v := make([]string, len(h))
	for i, x := range h {
		v[i] = x.Value
	}
	return v
}

func TestFairQueueRejectsBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	q := NewFairQueue(b.rdb, Config{Prefix: b.prefix})
	_, err := q.Park(b.ctx, "llm", Parked{ID: "", Tenant: "a"}, 1)
	require.Error(t, err)
	_, err = q.Park(b.ctx, "llm{x}", Parked{ID: "a", Tenant: "a"}, 1)
	require.Error(t, err)
	_, err = q.Park(b.ctx, "llm", Parked{ID: "a", Tenant: "a\nb"}, 1)
	require.Error(t, err)
}

// A step handed out that neither gets in nor parks again (its process died in between) is handed
// out again once overdue; one that got in or waits again is not.
func TestFairQueueOverdueHandOuts(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	m.SetTime(now)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	q := NewFairQueue(rdb, Config{})
	park(t, ctx, q, "a", 1, "a0", "a1", "a2")
	require.Equal(t, []string{"v-a0", "v-a1", "v-a2"}, mustUnpark(t, ctx, q, 3))
	_, err := q.Remove(ctx, "llm", "a", "a1") // got in
	require.NoError(t, err)
	park(t, ctx, q, "a", 1, "a2") // waits again
	o, err := q.Overdue(ctx, "llm", 10)
	require.NoError(t, err)
	require.Empty(t, o, "nothing is overdue before HandOutTTL")

	m.SetTime(now.Add(HandOutTTL + time.Millisecond))
	o, err = q.Overdue(ctx, "llm", 10)
	require.NoError(t, err)
	require.Equal(t, []Handout{{ID: "a0", Value: "v-a0"}}, o)
	o, err = q.Overdue(ctx, "llm", 10)
	require.NoError(t, err)
	require.Empty(t, o, "handed out again: overdue only after another HandOutTTL")
	require.NoError(t, q.Forget(ctx, "llm", "a0"))
	m.SetTime(now.Add(3 * HandOutTTL))
	o, err = q.Overdue(ctx, "llm", 10)
	require.NoError(t, err)
	require.Empty(t, o, "forgotten")
	require.Equal(t, []string{"v-a2"}, mustUnpark(t, ctx, q, 5), "the step that waits again is still parked")
}

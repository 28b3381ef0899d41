package limiter

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// queueHanded puts waiter wid, which takes handed slots, in name's queue (limit, TTL a minute).
func (b *bundle) queueHanded(t *testing.T, name string, limit int, wid string) {
	t.Helper()
	_, _, err := b.sem.acquire(b.ctx, name, limit, time.Minute, wid, true)
	require.ErrorIs(t, err, ErrFull)
}

// A waiter whose wake-up was lost (nobody listens here) finds the slot handed to it at its next
// poll, as a handed lease, and it is gone from the queue meanwhile.
func TestHandedSlotFoundByPoll(t *testing.T) {
	t.Parallel()
	b := setup(t)
	holder, err := b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "")
	require.NoError(t, err)
	b.queueHanded(t, "llm", 1, "w1")
	b.queueHanded(t, "llm", 1, "w2")

	require.NoError(t, b.sem.Release(b.ctx, holder))
	ids, err := b.sem.waiters(b.ctx, "llm", 5)
	require.NoError(t, err)
	require.Equal(t, []string{"w2"}, ids, "w1 left the queue with its slot")
	n, err := b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 1, n, "the handed slot is in use")
	_, err = b.sem.Acquire(b.ctx, "llm", 1, time.Minute, "")
	require.ErrorIs(t, err, ErrFull, "nobody else takes the handed slot")

	l, handed, err := b.sem.acquire(b.ctx, "llm", 1, time.Minute, "w1", true)
	require.NoError(t, err)
	require.True(t, handed)
	require.True(t, strings.HasPrefix(l.ID, "h") && strings.HasSuffix(l.ID, "|w1"), l.ID)
	require.Greater(t, l.Token, holder.Token)
	require.WithinDuration(t, time.Now().Add(time.Minute), l.ExpiresAt, 5*time.Second, "the TTL w1 asked for")
	require.Zero(t, l.RequestedAt, "the caller sets when a handed lease counts from")

	// Released, it goes to w2 in turn.
	require.NoError(t, b.sem.Release(b.ctx, l))
	l2, handed, err := b.sem.acquire(b.ctx, "llm", 1, time.Minute, "w2", true)
	require.NoError(t, err)
	require.True(t, handed)
	require.Greater(t, l2.Token, l.Token)
	require.NoError(t, b.sem.Release(b.ctx, l2))
	left, err := b.rdb.HLen(b.ctx, b.sem.keys("llm").handed).Result()
	require.NoError(t, err)
	require.Zero(t, left)
}

// A waiter that leaves before taking the slot handed to it gives the slot to the next waiter.
func TestLeaveHandsOnTheSlotHandedToIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	holder, err := b.sem.Acquire(b.ctx, "db", 1, time.Minute, "")
	require.NoError(t, err)
	b.queueHanded(t, "db", 1, "quitter")
	b.queueHanded(t, "db", 1, "stayer")
	require.NoError(t, b.sem.Release(b.ctx, holder))

	require.NoError(t, b.sem.Leave(b.ctx, "db", "quitter"))
	l, handed, err := b.sem.acquire(b.ctx, "db", 1, time.Minute, "stayer", true)
	require.NoError(t, err)
	require.True(t, handed, "the slot went on to stayer")
	require.True(t, strings.HasSuffix(l.ID, "|stayer"), l.ID)
	n, err := b.sem.InUse(b.ctx, "db")
	require.NoError(t, err)
	require.Equal(t, 1, n, "one slot, never two")
	_, handed, err = b.sem.acquire(b.ctx, "db", 1, time.Minute, "quitter", true)
	require.ErrorIs(t, err, ErrFull, "the quitter has no lease left")
	require.False(t, handed)
	require.NoError(t, b.sem.Release(b.ctx, l))
}

// A release hands a slot only when the waiter's own limit has room for it (a limit lowered since
// the releaser took its slot), and the queue stays in order behind that waiter.
func TestHandoffKeepsTheWaitersLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a, err := b.sem.Acquire(b.ctx, "gpu", 2, time.Minute, "")
	require.NoError(t, err)
	c, err := b.sem.Acquire(b.ctx, "gpu", 2, time.Minute, "")
	require.NoError(t, err)
	b.queueHanded(t, "gpu", 1, "low")
	b.queueHanded(t, "gpu", 2, "high")

	require.NoError(t, b.sem.Release(b.ctx, a))
	n, err := b.sem.InUse(b.ctx, "gpu")
	require.NoError(t, err)
	require.Equal(t, 1, n, "low's limit is 1 and one slot is in use: nothing handed")
	ids, err := b.sem.waiters(b.ctx, "gpu", 5)
	require.NoError(t, err)
	require.Equal(t, []string{"low", "high"}, ids, "high does not pass low")

	require.NoError(t, b.sem.Release(b.ctx, c))
	l, handed, err := b.sem.acquire(b.ctx, "gpu", 1, time.Minute, "low", true)
	require.NoError(t, err)
	require.True(t, handed)
	_, err = b.sem.Acquire(b.ctx, "gpu", 2, time.Minute, "high")
	require.NoError(t, err, "high is first now, and its limit has room")
	require.NoError(t, b.sem.Release(b.ctx, l))
}

// servedAfterRelease holds the only slot of semaphore name, queues a waiter of a wait room with
// the lease TTL ttl and options o, releases the slot, and returns the lease the waiter got and the
// time just before the release.
func (b *bundle) servedAfterRelease(t *testing.T, name string, ttl time.Duration, o WaitOptions) (Lease, time.Time) {
	t.Helper()
	w := b.room(t, "p1", 0)
	held, err := w.Acquire(b.ctx, name, 1, time.Minute, 4)
	require.NoError(t, err)
	got := acquireWithAsync(b.ctx, w, name, 1, ttl, 4, o)
	b.waitForWaiters(t, name, 1)
	beforeRelease := time.Now()
	require.NoError(t, b.sem.Release(b.ctx, held))
	l := receive(t, got, "the waiter of "+name)
	t.Cleanup(func() { require.NoError(t, b.sem.Release(context.Background(), l)) })
	return l, beforeRelease
}

// nextLimit is a WaitOptions.Next that always reads a limit of 1.
func nextLimit(context.Context) (int, error) { return 1, nil }

// A waiter whose limit may change while it waits (WaitOptions.Next) is woken and takes its slot
// itself, by the limit it reads then; it is never handed one.
func TestWaitRoomWakesWaiterWithChangingLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, beforeRelease := b.servedAfterRelease(t, "ai", time.Minute, WaitOptions{Next: nextLimit})
	require.False(t, strings.HasPrefix(l.ID, "h"), "not a handed lease: %q", l.ID)
	require.False(t, l.RequestedAt.Before(beforeRelease), "its own request, after the release, granted it")
}

// A waiter with a lease TTL too short for handed slots (see handMinTTL) is woken instead.
func TestWaitRoomShortTTLIsWokenNotHanded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.servedAfterRelease(t, "tiny", handMinTTL*b.sem.cfg.WaiterTTL-time.Second, WaitOptions{})
	require.False(t, strings.HasPrefix(l.ID, "h"), "not a handed lease: %q", l.ID)
}

func TestParseWake(t *testing.T) {
	t.Parallel()
	name, wakes, ok := parseWake("llm\np1#1\np2#7 h123|p2#7 123 456\nbad line\np3#2 h1|x notanumber 4")
	require.True(t, ok)
	require.Equal(t, "llm", name)
	require.Equal(t, []wakeUp{
		{waiter: "p1#1"},
		{waiter: "p2#7", handed: true, lease: Lease{ID: "h123|p2#7", Token: 123, ExpiresAt: time.UnixMilli(456)}},
	}, wakes)
	_, _, ok = parseWake("no newline")
	require.False(t, ok)
}

// While the service is on hold (Adaptive.Hold), a release hands no slot: it wakes the waiter, which
// finds the hold itself (its Next ends the wait); the slot stays free.
func TestNoHandoffDuringHold(t *testing.T) {
	t.Parallel()
	b := setup(t)
	holder, err := b.sem.Acquire(b.ctx, "paid", 1, time.Minute, "")
	require.NoError(t, err)
	b.queueHanded(t, "paid", 1, "w")
	_, ok, err := AdaptiveFor(b.sem).Hold(b.ctx, "paid", time.Minute, "tokens")
	require.NoError(t, err)
	require.True(t, ok)

	require.NoError(t, b.sem.Release(b.ctx, holder))
	n, err := b.sem.InUse(b.ctx, "paid")
	require.NoError(t, err)
	require.Zero(t, n, "no slot handed during the hold")
	ids, err := b.sem.waiters(b.ctx, "paid", 5)
	require.NoError(t, err)
	require.Equal(t, []string{"w"}, ids, "the waiter keeps its place")
	l, handed, err := b.sem.acquire(b.ctx, "paid", 1, time.Minute, "w", true)
	require.NoError(t, err, "the slot is free for the waiter to take itself")
	require.False(t, handed)
	require.NoError(t, b.sem.Release(b.ctx, l))
}

// A waiter whose Next only ends the wait (FixedLimit) takes handed slots.
func TestWaitRoomFixedLimitTakesHandedSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.servedAfterRelease(t, "hdr", time.Minute, WaitOptions{Next: nextLimit, FixedLimit: true})
	require.True(t, strings.HasPrefix(l.ID, "h"), "a handed lease: %q", l.ID)
}

package limiter

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// room returns a started wait room over b's semaphore. Its poll is an hour unless given, so a test
// that sees a waiter served knows the wake-up did it.
func (b *bundle) room(t *testing.T, id string, poll time.Duration) *WaitRoom {
	t.Helper()
	return b.roomWith(t, WaitRoomConfig{ID: id, Poll: poll})
}

func (b *bundle) roomWith(t *testing.T, cfg WaitRoomConfig) *WaitRoom {
	t.Helper()
	if cfg.Poll == 0 {
		cfg.Poll = time.Hour
	}
	w := NewWaitRoom(b.sem, cfg)
	require.NoError(t, w.Start(b.ctx))
	t.Cleanup(func() { require.NoError(t, w.Stop(context.Background())) })
	return w
}

type acquired struct {
	l   Lease
	err error
}

// acquireAsync waits in w for a slot of name in a goroutine and returns where its result arrives.
func acquireAsync(ctx context.Context, w *WaitRoom, name string, limit, maxWaiters int) <-chan acquired {
	return acquireWithAsync(ctx, w, name, limit, time.Minute, maxWaiters, WaitOptions{})
}

// acquireWithAsync is acquireAsync with a lease TTL and options.
func acquireWithAsync(ctx context.Context, w *WaitRoom, name string, limit int, ttl time.Duration, maxWaiters int, o WaitOptions) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		l, err := w.AcquireWith(ctx, name, limit, ttl, maxWaiters, o)
		ch <- acquired{l, err}
	}()
	return ch
}

// waitForWaiters waits until name's fleet-wide queue holds n waiters.
func (b *bundle) waitForWaiters(t *testing.T, name string, n int) {
	t.Helper()
	testinfra.Eventually(t, 5*time.Second, func() bool {
		ids, err := b.sem.waiters(b.ctx, name, n+1)
		return err == nil && len(ids) == n
	}, "%d waiters queued for %s", n, name)
}

func receive(t *testing.T, ch <-chan acquired, msg string) Lease {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err, msg)
		return r.l
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not served within 5s", msg)
		return Lease{}
	}
}

func TestWaitRoomReleaseWakesWaiterInAnotherProcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	holderRoom, waiterRoom := b.room(t, "p1", 0), b.room(t, "p2", 0)

	held, err := holderRoom.Acquire(b.ctx, "llm", 1, time.Minute, 4)
	require.NoError(t, err)
	beforeWait := time.Now()
	got := acquireAsync(b.ctx, waiterRoom, "llm", 1, 4)
	b.waitForWaiters(t, "llm", 1)
	require.Equal(t, 1, waiterRoom.Waiting("llm"))

	beforeRelease := time.Now()
	require.NoError(t, b.sem.Release(b.ctx, held))
	l := receive(t, got, "waiter after release")
	require.Greater(t, l.Token, held.Token)
	// The release handed the slot over: the waiter (whose poll is an hour) made no request of its
	// own, and its lease counts from its last poll that found no slot, the only one it sent: before
	// the release, as the lease was made after that poll ran.
	require.True(t, strings.HasPrefix(l.ID, "h"), "handed lease ID %q", l.ID)
	require.False(t, l.RequestedAt.Before(beforeWait), "RequestedAt %s is before the wait began at %s", l.RequestedAt, beforeWait)
	require.True(t, l.RequestedAt.Before(beforeRelease), "RequestedAt %s is not before the release at %s", l.RequestedAt, beforeRelease)
	require.Equal(t, 0, waiterRoom.Waiting("llm"))
	ids, err := b.sem.waiters(b.ctx, "llm", 5)
	require.NoError(t, err)
	require.Empty(t, ids, "a served waiter leaves the queue")

	// The handed lease is a lease like any other: renewed, released, and its slot handed on.
	l, err = b.sem.Renew(b.ctx, l, time.Minute)
	require.NoError(t, err)
	n, err := b.sem.InUse(b.ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	next := acquireAsync(b.ctx, holderRoom, "llm", 1, 4)
	b.waitForWaiters(t, "llm", 1)
	require.NoError(t, b.sem.Release(b.ctx, l))
	l2 := receive(t, next, "the waiter after the handed lease's release")
	require.Greater(t, l2.Token, l.Token)
	require.NoError(t, b.sem.Release(b.ctx, l2))
	handed, err := b.rdb.HLen(b.ctx, b.sem.keys("llm").handed).Result()
	require.NoError(t, err)
	require.Zero(t, handed, "a released lease leaves nothing in handed")
}

func TestWaitRoomServesWaitersInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r1, r2 := b.room(t, "p1", 0), b.room(t, "p2", 0)

	held, err := r1.Acquire(b.ctx, "db", 1, time.Minute, 8)
	require.NoError(t, err)
	var order []<-chan acquired
	for i := range 4 {
		room := r1
		if i%2 == 1 {
			room = r2
		}
		order = append(order, acquireAsync(b.ctx, room, "db", 1, 8))
		b.waitForWaiters(t, "db", i+1)
	}
	for i, ch := range order {
		require.NoError(t, b.sem.Release(b.ctx, held))
		held = receive(t, ch, "waiter "+string(rune('0'+i)))
		for _, later := range order[i+1:] {
			select {
			case r := <-later:
				t.Fatalf("a later waiter was served out of order: %+v", r)
			default:
			}
		}
	}
	require.NoError(t, b.sem.Release(b.ctx, held))
}

func TestWaitRoomLobby(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.roomWith(t, WaitRoomConfig{ID: "p1", LobbyWait: time.Hour})

	held, err := w.Acquire(b.ctx, "img", 1, time.Minute, 1)
	require.NoError(t, err)
	first := acquireAsync(b.ctx, w, "img", 1, 1)
	b.waitForWaiters(t, "img", 1)
	second := acquireAsync(b.ctx, w, "img", 1, 1)
	testinfra.Eventually(t, 5*time.Second, func() bool { return w.Waiting("img") == 2 }, "second caller waits")
	ids, err := b.sem.waiters(b.ctx, "img", 5)
	require.NoError(t, err)
	require.Len(t, ids, 1, "the room of img has one place: the second caller waits in the lobby, not in the queue")

	_, err = w.Acquire(b.ctx, "other", 1, time.Minute, 1)
	require.NoError(t, err, "rooms are per semaphore")

	require.NoError(t, b.sem.Release(b.ctx, held))
	held = receive(t, first, "the waiter in the room")
	b.waitForWaiters(t, "img", 1) // the lobby waiter took the freed place
	require.NoError(t, b.sem.Release(b.ctx, held))
	receive(t, second, "the waiter from the lobby")
	require.Equal(t, 0, w.Waiting("img"))
}

func TestWaitRoomLobbyGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.roomWith(t, WaitRoomConfig{ID: "p1", LobbyWait: 50 * time.Millisecond})

	_, err := w.Acquire(b.ctx, "img", 1, time.Minute, 1)
	require.NoError(t, err)
	inRoom := acquireAsync(b.ctx, w, "img", 1, 1)
	b.waitForWaiters(t, "img", 1)
	_, err = w.Acquire(b.ctx, "img", 1, time.Minute, 1)
	require.ErrorIs(t, err, ErrFull, "no place in the room within LobbyWait: the caller goes back to its queue")
	select {
	case r := <-inRoom:
		t.Fatalf("the waiter in the room was served without a free slot: %+v", r)
	default:
	}
}

func TestWaitRoomGivesUpPlaceWhenContextEnds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.room(t, "p1", 0)

	held, err := w.Acquire(b.ctx, "api", 1, time.Minute, 4)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(b.ctx)
	quitter := acquireAsync(ctx, w, "api", 1, 4)
	b.waitForWaiters(t, "api", 1)
	stayer := acquireAsync(b.ctx, w, "api", 1, 4)
	b.waitForWaiters(t, "api", 2)

	cancel()
	select {
	case r := <-quitter:
		require.ErrorIs(t, r.err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled waiter did not return")
	}
	b.waitForWaiters(t, "api", 1)
	require.NoError(t, b.sem.Release(b.ctx, held))
	receive(t, stayer, "the waiter behind the one that left")
}

func TestWaitRoomPollFindsExpiredLease(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.room(t, "p1", 20*time.Millisecond)

	// A holder that crashed never releases: its lease expires, and the waiter's poll finds the slot.
	_, err := b.sem.Acquire(b.ctx, "crashy", 1, 200*time.Millisecond, "")
	require.NoError(t, err)
	got := acquireAsync(b.ctx, w, "crashy", 1, 4)
	receive(t, got, "waiter after the holder's lease expired")
}

func TestWaitRoomUnlimitedNeverWaits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.room(t, "p1", 0)
	l, err := w.Acquire(b.ctx, "free", 0, time.Minute, 1)
	require.NoError(t, err)
	require.Zero(t, l.Token)
}

func TestWaitRoomReleaseWakesAsManyAsSlotsFree(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w := b.room(t, "p1", 0)

	a, err := w.Acquire(b.ctx, "gpu", 2, time.Minute, 4)
	require.NoError(t, err)
	c, err := w.Acquire(b.ctx, "gpu", 2, time.Minute, 4)
	require.NoError(t, err)
	first := acquireAsync(b.ctx, w, "gpu", 2, 4)
	b.waitForWaiters(t, "gpu", 1)
	second := acquireAsync(b.ctx, w, "gpu", 2, 4)
	b.waitForWaiters(t, "gpu", 2)

	// Two releases before the first waiter takes its slot: the second must wake the second waiter,
	// not the first again (nobody polls here).
	require.NoError(t, b.sem.Release(b.ctx, a))
	require.NoError(t, b.sem.Release(b.ctx, c))
	receive(t, first, "first waiter")
	receive(t, second, "second waiter")
}

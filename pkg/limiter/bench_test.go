package limiter

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/testinfra"
)

// BenchmarkAcquireRelease measures one Acquire and one Release of a semaphore that is never full.
func BenchmarkAcquireRelease(b *testing.B) {
	rdb, prefix := testinfra.KeyPrefix(b)
	sem := NewSemaphore(rdb, Config{Prefix: prefix})
	ctx := context.Background()
	for b.Loop() {
		l, err := sem.Acquire(ctx, "bench", 1<<30, time.Minute, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := sem.Release(ctx, l); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetNXDel measures a plain SET NX PX and DEL pair, the floor for any Redis lock.
func BenchmarkSetNXDel(b *testing.B) {
	rdb, prefix := testinfra.KeyPrefix(b)
	ctx := context.Background()
	key := prefix + "lock"
	for b.Loop() {
		ok, err := rdb.SetNX(ctx, key, "1", time.Minute).Result()
		if err != nil || !ok {
			b.Fatalf("set nx: %v %v", ok, err)
		}
		if err := rdb.Del(ctx, key).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWaitRoomSaturation keeps a semaphore of 3 slots under a backlog: 20 callers in two
// processes' wait rooms take a slot, hold it 20ms (a call) and release it, 10 calls per iteration
// each. It reports how busy the slots were kept (call time over slots x wall time): a freed slot
// must go to the next waiter at once, not at its next poll.
func BenchmarkWaitRoomSaturation(b *testing.B) {
	rdb, prefix := testinfra.KeyPrefix(b)
	sem := NewSemaphore(rdb, Config{Prefix: prefix})
	ctx := context.Background()
	var rooms []*WaitRoom
	for _, id := range []string{"p1", "p2"} {
		w := NewWaitRoom(sem, WaitRoomConfig{ID: id})
		if err := w.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = w.Stop(ctx) })
		rooms = append(rooms, w)
	}
	const (
		limit   = 3
		callers = 20
		calls   = 10
		hold    = 20 * time.Millisecond
	)
	var busy time.Duration
	start := time.Now()
	for b.Loop() {
		var wg sync.WaitGroup
		for i := range callers {
			w := rooms[i%len(rooms)]
			wg.Go(func() {
				for range calls {
					l, err := w.Acquire(ctx, "svc", limit, time.Minute, limit)
					if err != nil {
						b.Error(err)
						return
					}
					<-call(hold) // the slot is held while the call runs
					if err := sem.Release(ctx, l); err != nil {
						b.Error(err)
					}
				}
			})
		}
		wg.Wait()
		busy += callers * calls * hold
	}
	b.ReportMetric(100*float64(busy)/float64(limit*time.Since(start)), "busy%")
}

// call stands in for a service call that takes d: it answers on the returned channel when done.
func call(d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	time.AfterFunc(d, func() { close(done) })
	return done
}

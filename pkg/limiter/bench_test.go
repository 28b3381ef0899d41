package limiter

import (
	"context"
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

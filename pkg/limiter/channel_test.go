package limiter

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// TestWakeChannelIsPerDatabase: pub/sub is server-wide, so two deployments on different databases of
// one Redis server, with the same key prefix and the same semaphore and waiter names, must publish
// their wake-ups on different channels. A subscriber of each deployment's wake channel receives its
// own deployment's wake-up (positive control) and nothing of the other's: its connection delivers
// messages in the order the server published them, and its first message is its own, published last.
func TestWakeChannelIsPerDatabase(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, 30*time.Second)
	dbA, dbB := testinfra.Redis(t), testinfra.Redis(t)
	require.NotEqual(t, dbA.DB, dbB.DB)
	semA, semB := NewSemaphore(dbA.Client, Config{}), NewSemaphore(dbB.Client, Config{})
	require.Equal(t, fmt.Sprintf("cao:{db%d}:sem:wake", dbA.DB), semA.WakeChannel())
	require.NotEqual(t, semA.WakeChannel(), semB.WakeChannel())

	subA, subB := subscribe(ctx, t, dbA.Client, semA.WakeChannel()), subscribe(ctx, t, dbB.Client, semB.WakeChannel())

	releaseWithWaiter(ctx, t, semA, "waiter-of-a")
	require.Equal(t, "llm\nwaiter-of-a", nextPayload(t, subA))
	releaseWithWaiter(ctx, t, semB, "waiter-of-b")
	require.Equal(t, "llm\nwaiter-of-b", nextPayload(t, subB), "B's first wake-up is its own")
	releaseWithWaiter(ctx, t, semA, "waiter-of-a2")
	require.Equal(t, "llm\nwaiter-of-a2", nextPayload(t, subA), "A's next wake-up is its own")
	select {
	case m := <-subB:
		t.Fatalf("deployment B received %q", m.Payload)
	default:
	}
}

func subscribe(ctx context.Context, t *testing.T, rdb *redis.Client, channel string) <-chan *redis.Message {
	t.Helper()
	ps := rdb.Subscribe(ctx, channel)
	_, err := ps.Receive(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ps.Close() })
	return ps.Channel()
}

// releaseWithWaiter holds the only slot of semaphore "llm", queues waiterID behind it and releases
// the slot, which publishes a wake-up naming waiterID.
func releaseWithWaiter(ctx context.Context, t *testing.T, sem *Semaphore, waiterID string) {
	t.Helper()
	held, err := sem.Acquire(ctx, "llm", 1, time.Minute, "")
	require.NoError(t, err)
	_, err = sem.Acquire(ctx, "llm", 1, time.Minute, waiterID)
	require.True(t, errors.Is(err, ErrFull), "queued: %v", err)
	require.NoError(t, sem.Release(ctx, held))
	require.NoError(t, sem.Leave(ctx, "llm", waiterID))
}

func nextPayload(t *testing.T, ch <-chan *redis.Message) string {
	t.Helper()
	var payload string
	testinfra.Eventually(t, 5*time.Second, func() bool {
		select {
		case m := <-ch:
			payload = m.Payload
			return true
		default:
			return false
		}
	}, "a wake-up")
	return payload
}

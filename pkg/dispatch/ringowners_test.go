package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

func TestRingOwnerSharesAndMovesOnlyTheNewcomersShare(t *testing.T) {
	t.Parallel()
	three := []string{"w-a", "w-b", "w-c"}
	four := append([]string{"w-d"}, three...)
	counts := map[string]int{}
	for i := range 3000 {
		task := fmt.Sprintf("step:job-%d:1:1:a", i)
		before, after := ringOwner(task, three), ringOwner(task, four)
		require.Equal(t, before, ringOwner(task, []string{"w-c", "w-a", "w-b"}), "the order of the ids does not matter")
		if after != before {
			require.Equal(t, "w-d", after, "a newcomer takes tasks only for itself")
		}
		counts[before]++
	}
	for _, id := range three {
		require.InDelta(t, 1000, counts[id], 150, "%s's share of 3,000 tasks", id)
	}
	require.Empty(t, ringOwner("x", nil))
}

// TestRingOwnersOneOwnerPerRing: workers listing themselves for a queue own every ring of it exactly
// once between them; a worker that stops, or dies (its place expires), leaves its share to the
// others; a worker serving other queues takes no share, and a worker with no view (Redis
// unreachable) answers every ring.
func TestRingOwnersOneOwnerPerRing(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := context.Background()
	var ws []*RingOwners
	for _, id := range []string{"w1", "w2", "w3"} {
		o := NewRingOwners(rdb.Client, id, []string{"default", "heavy"}, nil)
		require.NoError(t, o.Start(ctx))
		t.Cleanup(func() { _ = o.Stop(ctx) })
		ws = append(ws, o)
	}
	other := NewRingOwners(rdb.Client, "w-other", []string{"medium"}, nil)
	require.NoError(t, other.Start(ctx))
	t.Cleanup(func() { _ = other.Stop(ctx) })
	for _, o := range ws {
		o.refresh(ctx) // every worker sees the others
	}
	owners := func(ws []*RingOwners, queue string) map[string]int {
		t.Helper()
		shares := map[string]int{}
		for i := range 300 {
			g := Ring{Queue: queue, ID: fmt.Sprintf("step:j%d:1:1:a", i)}
			n := 0
			for _, o := range ws {
				if o.Owns(g) {
					n++
					shares[o.id]++
				}
			}
			require.Equal(t, 1, n, "ring %s of %s has one owner (w-other, on another queue, takes no share)", g.ID, queue)
		}
		return shares
	}
	shares := owners(ws, "default")
	require.Len(t, shares, 3, "each worker owns a share")
	require.True(t, ws[0].Shared("default"), "others listen for default")
	require.False(t, other.Shared("medium"), "w-other alone listens for medium")
	owners(ws, "heavy")

	// w3 stops: once the others renewed their view, they own its share.
	require.NoError(t, ws[2].Stop(ctx))
	ws[0].refresh(ctx)
	ws[1].refresh(ctx)
	require.Len(t, owners(ws[:2], "default"), 2)

	// w2 dies: its place expires after ringListenerTTL, and w1 owns every ring.
	_, err := ws[1].life.Stop(ctx) // no more renewals, and no goodbye
	require.NoError(t, err)
	ws[0].now = func() time.Time { return time.Now().Add(ringListenerTTL + time.Second) }
	ws[0].refresh(ctx)
	require.Len(t, owners(ws[:1], "default"), 1)
	require.False(t, ws[0].Shared("default"), "w1 is alone now: nothing to pass on")

	// No view: every ring is answered.
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer down.Close()
	blind := NewRingOwners(down, "w-blind", []string{"default"}, nil)
	require.NoError(t, blind.Start(ctx))
	defer func() { _ = blind.Stop(ctx) }()
	require.True(t, blind.Owns(Ring{Queue: "default", ID: "anything"}))
	require.False(t, blind.Shared("default"))
	var none *RingOwners
	require.True(t, none.Owns(Ring{Queue: "default", ID: "anything"}))
	require.False(t, none.Shared("default"))
}

package events

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFollowerQueueBound(t *testing.T) {
	t.Parallel()
	frames := func(n int) *Delivery { return &Delivery{frames: make([]Frame, n)} }

	f := newFollower(nil, 4)
	f.offer(frames(10)) // a page after a burst: accepted because nothing else waits
	require.False(t, f.Slow())
	f.pending.Add(-int64(len((<-f.C()).frames))) // what Deliver does first
	for range 4 {
		f.offer(frames(1))
	}
	require.False(t, f.Slow(), "exactly the bound")
	f.offer(frames(1))
	require.True(t, f.Slow(), "over the bound")
	select {
	case <-f.SlowC():
	default:
		t.Fatal("SlowC not closed")
	}
	f.offer(frames(1)) // offers to a slow follower are dropped, without blocking or panicking
}

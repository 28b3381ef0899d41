package events_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

func ev(job string, seq int64, typ, status string) store.Event {
	return store.Event{JobID: job, Seq: seq, Type: typ, Step: "s", Status: status, Attempt: 1, Run: 1, At: time.Now()}
}

func TestHubFansOutAcrossProcessesByJob(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	// Two hubs stand for two API replicas; one publisher for a worker.
	h1, h2 := events.NewHub(rdb.Client), events.NewHub(rdb.Client)
	require.NoError(t, h1.Start(ctx))
	require.NoError(t, h2.Start(ctx))
	defer func() {
		require.NoError(t, h1.Stop(context.Background()))
		require.NoError(t, h2.Stop(context.Background()))
	}()
	a1, a2 := h1.Subscribe("job-a", 16), h2.Subscribe("job-a", 16)
	b1 := h1.Subscribe("job-b", 16)
	all := h2.SubscribeAll(16)
	pub := events.NewRedisPublisher(rdb.Client)
	require.NoError(t, pub.Publish(ctx, []store.Event{ev("job-a", 1, store.EventStep, "RUNNING"), ev("job-a", 2, store.EventJob, "COMPLETED")}))
	require.NoError(t, pub.Publish(ctx, []store.Event{ev("job-b", 1, store.EventJob, "RUNNING")}))

	for _, sub := range []*events.Subscription{a1, a2} {
		m := <-sub.C
		require.Equal(t, int64(1), m.Seq)
		require.Equal(t, "s", m.Step)
		require.NotNil(t, m.Attempt)
		m = <-sub.C
		require.Equal(t, int64(2), m.Seq)
		require.True(t, m.Terminal())
		require.Empty(t, m.Step, "job messages carry no step")
	}
	m := <-b1.C
	require.Equal(t, "job-b", m.JobID)
	got := 0
	for range 3 {
		<-all.C
		got++
	}
	require.Equal(t, 3, got)
	require.Equal(t, 4, h1.Subscribers()+h2.Subscribers())
	a1.Close()
	a1.Close()
	require.Equal(t, 3, h1.Subscribers()+h2.Subscribers())
}

func TestSlowSubscriberOverflowsWithoutBlockingOthers(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	h := events.NewHub(rdb.Client)
	require.NoError(t, h.Start(ctx))
	defer func() { require.NoError(t, h.Stop(context.Background())) }()
	slow := h.Subscribe("j", 2)
	fast := h.Subscribe("j", 64)
	pub := events.NewRedisPublisher(rdb.Client)
	var batch []store.Event
	for i := range 10 {
		batch = append(batch, ev("j", int64(i+1), store.EventStep, "RUNNING"))
	}
	require.NoError(t, pub.Publish(ctx, batch))
	for i := range 10 {
		m := <-fast.C
		require.Equal(t, int64(i+1), m.Seq)
	}
	n := 0
	for range slow.C { // closed after overflow
		n++
	}
	require.Equal(t, 2, n)
	require.True(t, slow.Overflowed())
	require.False(t, fast.Overflowed())
}

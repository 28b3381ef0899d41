package events_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
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

// startHub starts a hub on rdb, stopped at the end of the test.
func startHub(t *testing.T, ctx context.Context, rdb redis.UniversalClient) *events.Hub {
	t.Helper()
	h := events.NewHub(rdb)
	require.NoError(t, h.Start(ctx))
	t.Cleanup(func() { require.NoError(t, h.Stop(context.Background())) })
	return h
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
	pub := events.NewRedisPublisher(rdb.Client, nil)
	pub.Post([]store.Event{ev("job-a", 1, store.EventStep, "RUNNING"), ev("job-a", 2, store.EventJob, "COMPLETED")})
	require.NoError(t, pub.Flush(ctx))
	pub.Post([]store.Event{ev("job-b", 1, store.EventJob, "RUNNING")})
	require.NoError(t, pub.Flush(ctx))

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
	select {
	case m := <-a2.C:
		t.Fatalf("job-a's subscriber received %+v", m)
	default:
	}
	require.Equal(t, 3, h1.Subscribers()+h2.Subscribers())
	a1.Close()
	a1.Close()
	require.Equal(t, 2, h1.Subscribers()+h2.Subscribers())
}

func TestSlowSubscriberOverflowsWithoutBlockingOthers(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	h := startHub(t, ctx, rdb.Client)
	slow := h.Subscribe("j", 2)
	fast := h.Subscribe("j", 64)
	pub := events.NewRedisPublisher(rdb.Client, nil)
	var batch []store.Event
	for i := range 10 {
		batch = append(batch, ev("j", int64(i+1), store.EventStep, "RUNNING"))
	}
	pub.Post(batch)
	require.NoError(t, pub.Flush(ctx))
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

// TestDeploymentsOnOtherDatabasesShareNoEvents: pub/sub is server-wide, so two deployments on
// different databases of one Redis server must use different channels. Each side has a positive
// control (a hub of its own database receives its own event); the other side's hub, whose
// connection delivers messages in the order the server published them, receives its own event
// first, so nothing published earlier on the other database reached it.
func TestDeploymentsOnOtherDatabasesShareNoEvents(t *testing.T) {
	t.Parallel()
	dbA, dbB := testinfra.Redis(t), testinfra.Redis(t)
	require.NotEqual(t, dbA.DB, dbB.DB)
	ctx := testinfra.Context(t, 30*time.Second)
	require.Equal(t, fmt.Sprintf("cao:{db%d}:events", dbA.DB), events.Channel(dbA.Client))
	require.NotEqual(t, events.Channel(dbA.Client), events.Channel(dbB.Client))
	require.Equal(t, fmt.Sprintf("cao:{db%d}:cancels", dbA.DB), events.CancelChannel(dbA.Client))
	require.NotEqual(t, events.CancelChannel(dbA.Client), events.CancelChannel(dbB.Client))

	hubA, hubB := events.NewHub(dbA.Client), events.NewHub(dbB.Client)
	require.NoError(t, hubA.Start(ctx))
	require.NoError(t, hubB.Start(ctx))
	defer func() {
		require.NoError(t, hubA.Stop(context.Background()))
		require.NoError(t, hubB.Stop(context.Background()))
	}()
	// Each hub follows both jobs: its own deployment's, and the other's, which must never arrive.
	allA, crossA := hubA.Subscribe("job-of-a", 16), hubA.Subscribe("job-of-b", 16)
	allB, crossB := hubB.Subscribe("job-of-b", 16), hubB.Subscribe("job-of-a", 16)
	pubA, pubB := events.NewRedisPublisher(dbA.Client, nil), events.NewRedisPublisher(dbB.Client, nil)
	require.Equal(t, hubA.Channel(), pubA.Channel())

	// A publishes; A's own hub receives it (positive control).
	pubA.Post([]store.Event{ev("job-of-a", 1, store.EventJob, "RUNNING")})
	require.NoError(t, pubA.Flush(ctx))
	require.Equal(t, "job-of-a", next(t, allA).JobID)
	// B publishes after A; B's first message is its own, so A's did not cross.
	pubB.Post([]store.Event{ev("job-of-b", 1, store.EventJob, "RUNNING")})
	require.NoError(t, pubB.Flush(ctx))
	require.Equal(t, "job-of-b", next(t, allB).JobID)
	// And B's did not reach A.
	pubA.Post([]store.Event{ev("job-of-a", 2, store.EventJob, "COMPLETED")})
	require.NoError(t, pubA.Flush(ctx))
	m := next(t, allA)
	require.Equal(t, "job-of-a", m.JobID)
	require.Equal(t, int64(2), m.Seq)
	for name, s := range map[string]*events.Subscription{"A": crossA, "B": crossB} {
		select {
		case m := <-s.C:
			t.Fatalf("deployment %s received the other's %+v", name, m)
		default:
		}
	}
}

// next returns the subscription's next message, failing the test after 5s.
func next(t *testing.T, s *events.Subscription) events.Message {
	t.Helper()
	var m events.Message
	var ok bool
	testinfra.Eventually(t, 5*time.Second, func() bool {
		select {
		case m, ok = <-s.C:
			return true
		default:
			return false
		}
	}, "a message on the subscription")
	require.True(t, ok, "subscription closed")
	return m
}

// TestHubStartStopTwice: the hub runs on startstop.Loop, so Start and Stop are safe to call twice, a
// Stop closes every local subscription, and a stopped hub can start again.
func TestHubStartStopTwice(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	h := events.NewHub(rdb.Client)
	require.NoError(t, h.Stop(ctx), "a hub that never started stops")
	require.NoError(t, h.Start(ctx))
	require.NoError(t, h.Start(ctx), "a second Start does nothing")
	pub := events.NewRedisPublisher(rdb.Client, nil)
	sub := h.Subscribe("j", 4)
	pub.Post([]store.Event{ev("j", 1, store.EventJob, "RUNNING")})
	require.NoError(t, pub.Flush(ctx))
	require.Equal(t, int64(1), next(t, sub).Seq)

	require.NoError(t, h.Stop(ctx))
	require.NoError(t, h.Stop(ctx), "a second Stop does nothing")
	_, open := <-sub.C
	require.False(t, open, "Stop closes the local subscriptions")
	require.False(t, sub.Overflowed())
	require.Zero(t, h.Subscribers())

	require.NoError(t, h.Start(ctx), "a stopped hub starts again")
	defer func() { require.NoError(t, h.Stop(context.Background())) }()
	sub = h.Subscribe("j", 4)
	pub.Post([]store.Event{ev("j", 2, store.EventJob, "COMPLETED")})
	require.NoError(t, pub.Flush(ctx))
	require.Equal(t, int64(2), next(t, sub).Seq)
}

// TestHubSubscribesWhileWatched: a started hub reads the events channel only while it has a local
// subscriber, and for its linger after the last one left; a subscriber gets every event published
// after Subscribe returned, the first one included.
func TestHubSubscribesWhileWatched(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	h := events.NewHub(rdb.Client)
	h.SetLinger(50 * time.Millisecond)
	require.NoError(t, h.Start(ctx))
	defer func() { require.NoError(t, h.Stop(context.Background())) }()
	channel := events.Channel(rdb.Client)
	numsub := func() int64 { return rdb.Client.PubSubNumSub(ctx, channel).Val()[channel] }
	require.Zero(t, numsub(), "nobody watches: the hub does not read the fleet's events")
	require.False(t, h.Subscribed())

	pub := events.NewRedisPublisher(rdb.Client, nil)
	for round := int64(1); round <= 2; round++ {
		sub := h.Subscribe("j", 4)
		require.EqualValues(t, 1, numsub(), "round %d: subscribed when Subscribe returns", round)
		pub.Post([]store.Event{ev("j", round, store.EventJob, "RUNNING")})
		require.NoError(t, pub.Flush(ctx))
		require.Equal(t, round, next(t, sub).Seq)
		sub.Close()
		testinfra.Eventually(t, 5*time.Second, func() bool { return numsub() == 0 && !h.Subscribed() },
			"round %d: the subscription closed after the linger", round)
	}
	// A subscriber that comes during the linger keeps the subscription.
	h.SetLinger(time.Hour)
	a := h.Subscribe("a", 4)
	a.Close()
	b := h.Subscribe("b", 4)
	require.True(t, h.Subscribed())
	pub.Post([]store.Event{ev("b", 1, store.EventJob, "RUNNING")})
	require.NoError(t, pub.Flush(ctx))
	require.Equal(t, "b", next(t, b).JobID)
}

// TestHubSubscribesOnceRedisAnswers: a hub whose Redis does not answer when its first subscriber
// comes lets Subscribe return without the subscription, tries again in the background, and
// delivers once Redis is back. The embedded mode's in-process Redis stands for a server that
// restarts.
func TestHubSubscribesOnceRedisAnswers(t *testing.T) {
	t.Parallel()
	m := miniredis.NewMiniRedis()
	require.NoError(t, m.Start())
	t.Cleanup(m.Close)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := testinfra.Context(t, 30*time.Second)
	h := startHub(t, ctx, rdb) // stopped before the client closes (cleanups run last first)
	m.Close()

	sub := h.Subscribe("j", 4)
	require.False(t, h.Subscribed(), "Redis is down")
	other := h.Subscribe("k", 4)
	require.False(t, h.Subscribed())
	require.NoError(t, m.Restart())
	testinfra.Eventually(t, 10*time.Second, h.Subscribed, "the hub subscribed once Redis answered")
	pub := events.NewRedisPublisher(rdb, nil)
	pub.Post([]store.Event{ev("j", 1, store.EventJob, "RUNNING"), ev("k", 1, store.EventJob, "RUNNING")})
	require.NoError(t, pub.Flush(ctx))
	require.Equal(t, "j", next(t, sub).JobID)
	require.Equal(t, "k", next(t, other).JobID)
}

// TestCancellationsOnTheirOwnChannel: the job messages that cancel a job reach ListenCancels, in
// order, and nothing else does (a cancelled step, a completed job); the events channel still
// carries every message, the cancellations included.
func TestCancellationsOnTheirOwnChannel(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	h := startHub(t, ctx, rdb.Client)
	b, d := h.Subscribe("job-b", 16), h.Subscribe("job-d", 16)
	cancelled := make(chan string, 16)
	l, err := events.ListenCancels(ctx, rdb.Client, nil, func(jobID string) { cancelled <- jobID })
	require.NoError(t, err)
	defer l.Close()
	subs := rdb.Client.PubSubNumSub(ctx, events.CancelChannel(rdb.Client)).Val()
	require.EqualValues(t, 1, subs[events.CancelChannel(rdb.Client)], "the listener is subscribed when ListenCancels returns")

	pub := events.NewRedisPublisher(rdb.Client, nil)
	pub.Post([]store.Event{ev("job-a", 1, store.EventStep, "RUNNING")})
	pub.Post([]store.Event{ev("job-b", 1, store.EventStep, "CANCELLED"), ev("job-b", 2, store.EventJob, "CANCELLED")})
	pub.Post([]store.Event{ev("job-c", 1, store.EventJob, "COMPLETED")})
	pub.Post([]store.Event{ev("job-d", 1, store.EventJob, "CANCELLED")})
	require.NoError(t, pub.Flush(ctx))
	var got []string
	for range 2 {
		select {
		case id := <-cancelled:
			got = append(got, id)
		case <-ctx.Done():
			t.Fatalf("cancellations heard: %v", got)
		}
	}
	require.Equal(t, []string{"job-b", "job-d"}, got, "the cancelled jobs, in order, and only those")
	require.Equal(t, int64(1), next(t, b).Seq)
	require.Equal(t, int64(2), next(t, b).Seq, "the events channel still carries the cancellation")
	require.Equal(t, "CANCELLED", next(t, d).Status)

	l.Close()
	l.Close()
	pub.Post([]store.Event{ev("job-e", 1, store.EventJob, "CANCELLED")})
	require.NoError(t, pub.Flush(ctx))
	select {
	case id := <-cancelled:
		t.Fatalf("heard %s after Close", id)
	default:
	}
}

// TestPostKeepsOrderAndFlushWaits checks Post: it returns before its events are sent, the events
// of many calls reach a subscriber in the order of the calls, and Flush returns once every event
// posted before it is sent.
func TestPostKeepsOrderAndFlushWaits(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	h := startHub(t, ctx, rdb.Client)
	sub := h.Subscribe("job-p", 512)
	pub := events.NewRedisPublisher(rdb.Client, nil)
	const n = 300
	for i := int64(1); i <= n; i++ {
		pub.Post([]store.Event{ev("job-p", i, store.EventStep, "RUNNING")})
	}
	require.NoError(t, pub.Flush(ctx))
	for i := int64(1); i <= n; i++ {
		select {
		case m := <-sub.C:
			require.Equal(t, i, m.Seq)
		case <-ctx.Done():
			t.Fatalf("event %d never arrived", i)
		}
	}
	pub.Post(nil) // nothing to send
	require.NoError(t, pub.Flush(ctx))
}

// TestPostFailureIsLogged checks that a send of posted events that fails is logged (the events are
// in the log, where readers find them) by the time a later Flush returns.
func TestPostFailureIsLogged(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	var logs testinfra.LogBuffer
	pub := events.NewRedisPublisher(rdb.Client, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, rdb.Client.Close())
	pub.Post([]store.Event{ev("job-x", 1, store.EventJob, "RUNNING")})
	_ = pub.Flush(ctx) // fails too, when the marker is sent alone
	require.Contains(t, logs.String(), "publish events")
}

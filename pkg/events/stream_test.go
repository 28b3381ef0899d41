package events_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

// The stream tests run on real Redis (the hub) and on both stores (the event log): Postgres and
// SQLite.

// storeLog reads the event log straight from a store, as the orchestrator does.
type storeLog struct{ store.Store }

func (l storeLog) Job(ctx context.Context, scope store.Scope, id string) (*store.Job, error) {
	return l.GetJob(ctx, scope, id)
}

func (l storeLog) EventLog(ctx context.Context, id string, afterSeq int64, limit int) ([]store.Event, error) {
	return l.ListEvents(ctx, id, afterSeq, limit)
}

// streamBundle is one process's streams over a fresh store and a fresh Redis database.
type streamBundle struct {
	ctx     context.Context
	st      store.Store
	hub     *events.Hub
	pub     *events.RedisPublisher
	streams *events.Streams
}

func setupStreams(t *testing.T, backend string, cfg events.StreamConfig) *streamBundle {
	t.Helper()
	var st store.Store
	if backend == "sqlite" {
		st = teststore.SQLite(t)
	} else {
		st, _ = teststore.Postgres(t)
	}
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, time.Minute)
	hub := events.NewHub(rdb.Client)
	require.NoError(t, hub.Start(ctx))
	cfg.NotFound = store.ErrNotFound
	b := &streamBundle{
		ctx: ctx, st: st, hub: hub, pub: events.NewRedisPublisher(rdb.Client, nil),
		streams: events.NewStreams(hub, storeLog{st}, cfg),
	}
	t.Cleanup(func() {
		require.NoError(t, b.streams.Stop(context.Background()))
		require.NoError(t, hub.Stop(context.Background()))
	})
	return b
}

// onEachStore runs body, in parallel, on Postgres and on SQLite.
func onEachStore(t *testing.T, body func(t *testing.T, backend string)) {
	t.Helper()
	for _, backend := range []string{"postgres", "sqlite"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			body(t, backend)
		})
	}
}

// newJob inserts a running job without events and returns its id.
func (b *streamBundle) newJob(t *testing.T) string {
	t.Helper()
	j := &store.Job{ID: uuid.NewString(), FeatureName: "f", Status: store.JobRunning, Input: json.RawMessage(`{}`)}
	require.NoError(t, b.st.Tx(b.ctx, func(tx store.Tx) error { return tx.InsertJob(b.ctx, j) }))
	return j.ID
}

// commit appends n step events to the job's log in one transaction, the last one the job's
// COMPLETED event when terminal, as the orchestrator does (seq from last_seq, moved in the same
// transaction); it does not publish them.
func (b *streamBundle) commit(t *testing.T, jobID string, n int, terminal bool) []store.Event {
	t.Helper()
	var evs []store.Event
	require.NoError(t, b.st.Tx(b.ctx, func(tx store.Tx) error {
		job, err := tx.LockJob(b.ctx, jobID)
		if err != nil {
			return err
		}
		now := time.Now().UTC().Truncate(time.Microsecond)
		evs = make([]store.Event, n)
		for i := range evs {
			job.LastSeq++
			evs[i] = store.Event{
				JobID: jobID, Seq: job.LastSeq, Type: store.EventStep, Step: "s",
				Status: string(store.StepRunning), Attempt: i + 1, Run: 1, At: now,
			}
		}
		if terminal {
			evs[n-1] = store.Event{JobID: jobID, Seq: job.LastSeq, Type: store.EventJob, Status: string(store.JobCompleted), At: now}
		}
		if err := tx.AppendEvents(b.ctx, evs); err != nil {
			return err
		}
		return tx.UpdateJob(b.ctx, job)
	}))
	return evs
}

// follower follows the job from seq last on, until the test ends.
func (b *streamBundle) follower(t *testing.T, jobID string, last int64) *events.Follower {
	t.Helper()
	f, err := b.streams.Follow(b.ctx, jobID)
	require.NoError(t, err)
	t.Cleanup(f.Close)
	f.SetLast(last)
	return f
}

func (b *streamBundle) publish(t *testing.T, evs ...store.Event) {
	t.Helper()
	b.pub.Post(evs)
	require.NoError(t, b.pub.Flush(b.ctx))
}

// follow reads f's deliveries until it was handed the event with seq until, or one that ends the job.
func (b *streamBundle) follow(t *testing.T, f *events.Follower, until int64) (frames []events.Frame, done bool) {
	t.Helper()
	for len(frames) == 0 || frames[len(frames)-1].Seq < until {
		select {
		case d := <-f.C():
			var err error
			done, err = f.Deliver(b.ctx, d, func(fr events.Frame) error { frames = append(frames, fr); return nil })
			require.NoError(t, err)
			if done {
				return frames, true
			}
		case <-b.ctx.Done():
			t.Fatalf("follower stopped at %d of %d frames", len(frames), until)
		}
	}
	return frames, done
}

// requireFrames checks that frames are the log's events from seq first on, each encoded as REST's
// /events encodes it.
func (b *streamBundle) requireFrames(t *testing.T, jobID string, first int64, frames []events.Frame) {
	t.Helper()
	evs, err := b.st.ListEvents(b.ctx, jobID, first-1, len(frames))
	require.NoError(t, err)
	require.Len(t, evs, len(frames), "frames beyond the log")
	for i, fr := range frames {
		require.Equal(t, first+int64(i), fr.Seq, "frame %d", i)
		want, err := json.Marshal(events.FromEvent(evs[i]))
		require.NoError(t, err)
		require.JSONEq(t, string(want), string(fr.Data), "frame %d", i)
		require.Equal(t, evs[i].Type == store.EventJob && store.JobStatus(evs[i].Status).Terminal(), fr.Terminal)
	}
}

// TestStreamsOrderAndFillGaps: a message ahead of what the topic delivered makes it read the gap from
// the log; duplicates and messages it already read are dropped; the job's last event ends the stream.
func TestStreamsOrderAndFillGaps(t *testing.T) {
	t.Parallel()
	onEachStore(t, func(t *testing.T, backend string) {
		b := setupStreams(t, backend, events.StreamConfig{PollInterval: time.Hour})
		jobID := b.newJob(t)
		b.commit(t, jobID, 2, false) // before anyone watches: the starting point has them
		f := b.follower(t, jobID, 2)

		// 3-5 commit together; 5's publish overtakes 3 and 4's.
		evs := b.commit(t, jobID, 3, false)
		b.publish(t, evs[2])
		b.publish(t, evs[0], evs[1])
		frames, done := b.follow(t, f, 5)
		require.False(t, done)
		b.requireFrames(t, jobID, 3, frames)

		// A duplicate, then the terminal event.
		last := b.commit(t, jobID, 1, true)
		b.publish(t, evs[1])
		b.publish(t, last...)
		frames, done = b.follow(t, f, 6)
		require.True(t, done)
		b.requireFrames(t, jobID, 6, frames)
	})
}

// TestStreamsPollFindsLostPublish: events committed but never published (the process died after
// commit) reach followers through the poll, also once the hub has stopped.
func TestStreamsPollFindsLostPublish(t *testing.T) {
	t.Parallel()
	onEachStore(t, func(t *testing.T, backend string) {
		b := setupStreams(t, backend, events.StreamConfig{PollInterval: 20 * time.Millisecond})
		jobID := b.newJob(t)
		f := b.follower(t, jobID, 0)

		b.commit(t, jobID, 3, false)
		frames, _ := b.follow(t, f, 3)
		b.requireFrames(t, jobID, 1, frames)

		require.NoError(t, b.hub.Stop(b.ctx))
		b.commit(t, jobID, 2, true)
		frames, done := b.follow(t, f, 5)
		require.True(t, done)
		b.requireFrames(t, jobID, 4, frames)
	})
}

// TestStreamsBurstLargerThanBuffer: a publish larger than the topic's hub buffer overflows its
// subscription; the topic subscribes again and reads what it missed, so nothing is lost.
func TestStreamsBurstLargerThanBuffer(t *testing.T) {
	t.Parallel()
	onEachStore(t, func(t *testing.T, backend string) {
		b := setupStreams(t, backend, events.StreamConfig{Buffer: 2, PollInterval: time.Hour})
		jobID := b.newJob(t)
		f := b.follower(t, jobID, 0)

		b.publish(t, b.commit(t, jobID, 200, true)...)
		frames, done := b.follow(t, f, 200)
		require.True(t, done)
		b.requireFrames(t, jobID, 1, frames)
	})
}

// TestFollowerStartsBehindItsTopic: a follower whose starting point is older than its topic (it read
// the database before the topic knew where it stood) fills its own gap from the log, page by page;
// Page and Replay send a returning watcher what it missed.
func TestFollowerStartsBehindItsTopic(t *testing.T) {
	t.Parallel()
	onEachStore(t, func(t *testing.T, backend string) {
		b := setupStreams(t, backend, events.StreamConfig{PageSize: 2, PollInterval: time.Hour})
		jobID := b.newJob(t)
		b.commit(t, jobID, 5, false)
		behind := b.follower(t, jobID, 0)

		b.publish(t, b.commit(t, jobID, 1, false)...)
		frames, done := b.follow(t, behind, 6)
		require.False(t, done)
		b.requireFrames(t, jobID, 1, frames)

		// A watcher back with after_seq=1: the first page, then the rest.
		back := b.follower(t, jobID, 1)
		page, more, err := back.Page(b.ctx)
		require.NoError(t, err)
		require.True(t, more)
		b.requireFrames(t, jobID, 2, page)
		var rest []events.Frame
		terminal, err := back.Replay(b.ctx, func(fr events.Frame) error { rest = append(rest, fr); return nil })
		require.NoError(t, err)
		require.False(t, terminal)
		b.requireFrames(t, jobID, 4, rest)

		// The terminal event ends the replay too.
		b.commit(t, jobID, 1, true)
		terminal, err = back.Replay(b.ctx, func(fr events.Frame) error { rest = append(rest, fr); return nil })
		require.NoError(t, err)
		require.True(t, terminal)
		b.requireFrames(t, jobID, 4, rest)
	})
}

// TestStreamsReleaseTopics: a job's topic and its hub subscription live while the job has followers;
// an unknown job leaves none; Stop refuses new followers and is safe twice.
func TestStreamsReleaseTopics(t *testing.T) {
	t.Parallel()
	onEachStore(t, func(t *testing.T, backend string) {
		b := setupStreams(t, backend, events.StreamConfig{PollInterval: 20 * time.Millisecond})
		_, err := b.streams.Follow(b.ctx, uuid.NewString())
		require.ErrorIs(t, err, store.ErrNotFound)
		require.Zero(t, b.streams.Topics())
		require.Zero(t, b.hub.Subscribers())

		jobID := b.newJob(t)
		f1, err := b.streams.Follow(b.ctx, jobID)
		require.NoError(t, err)
		f2, err := b.streams.Follow(b.ctx, jobID)
		require.NoError(t, err)
		require.Equal(t, 1, b.streams.Topics(), "one topic per job")
		require.Equal(t, 1, b.hub.Subscribers(), "one hub subscription per job")
		f1.Close()
		f1.Close()
		require.Equal(t, 1, b.streams.Topics())
		f2.Close()
		require.Zero(t, b.streams.Topics())
		testinfra.Eventually(t, 5*time.Second, func() bool { return b.hub.Subscribers() == 0 },
			"the topic's hub subscription closed")

		open, err := b.streams.Follow(b.ctx, jobID)
		require.NoError(t, err)
		require.NoError(t, b.streams.Stop(b.ctx))
		_, err = b.streams.Follow(b.ctx, jobID)
		require.ErrorIs(t, err, events.ErrStopping)
		open.Close()
		require.NoError(t, b.streams.Stop(b.ctx), "stop twice")
		require.Zero(t, b.hub.Subscribers())
	})
}

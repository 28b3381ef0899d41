package dispatch_test

import (
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/testinfra"
)

// TestStealTakesOnlyPendingTasks: Steal takes a pending task out of Asynq (once), and leaves alone
// the other tasks of the queue and tasks that are scheduled or archived.
func TestStealTakesOnlyPendingTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testinfra.Context(t, 30*time.Second)
	enqueue := func(id string, opts ...asynq.Option) {
		_, err := b.q.EnqueueContext(ctx, asynq.NewTask(task.TypeStep, []byte(`{}`)), append(opts, asynq.TaskID(id), asynq.Queue("q"))...)
		require.NoError(t, err)
	}
	state := func(id string) asynq.TaskState {
		info, err := b.insp.GetTaskInfo("q", id)
		require.NoError(t, err)
		return info.State
	}
	enqueue("p1")
	enqueue("p2")
	enqueue("p3")
	enqueue("later", asynq.ProcessIn(time.Hour))
	enqueue("failed", asynq.ProcessIn(time.Hour))
	require.NoError(t, b.insp.ArchiveTask("q", "failed"))

	taken, err := dispatch.Steal(ctx, b.rdb.Client, "q", "p2")
	require.NoError(t, err)
	require.True(t, taken)
	_, err = b.insp.GetTaskInfo("q", "p2")
	require.ErrorIs(t, err, asynq.ErrTaskNotFound)
	taken, err = dispatch.Steal(ctx, b.rdb.Client, "q", "p2")
	require.NoError(t, err)
	require.False(t, taken, "taken once")

	for _, id := range []string{"later", "failed", "missing"} {
		taken, err := dispatch.Steal(ctx, b.rdb.Client, "q", id)
		require.NoError(t, err)
		require.False(t, taken, id)
	}
	require.Equal(t, asynq.TaskStateScheduled, state("later"))
	require.Equal(t, asynq.TaskStateArchived, state("failed"))
	require.Equal(t, asynq.TaskStatePending, state("p1"))
	require.Equal(t, asynq.TaskStatePending, state("p3"))
	info, err := b.insp.GetQueueInfo("q")
	require.NoError(t, err)
	require.Equal(t, 2, info.Pending)

	// The id is free again: the reconciler may enqueue the task anew.
	enqueue("p2")
	require.Equal(t, asynq.TaskStatePending, state("p2"))
}

// TestBellRingsDispatchedTasks: Dispatch rings for the tasks it enqueues to run now, not for those it
// schedules, and the rings carry the tasks whole. A task to run now carries its Carried snapshot, in
// its queue and in its ring; a scheduled one does not.
func TestBellRingsDispatchedTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testinfra.Context(t, 30*time.Second)
	l, err := dispatch.ListenBell(ctx, b.rdb.Client, 8, nil)
	require.NoError(t, err)
	defer l.Close()
	relay := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{Bell: dispatch.NewBell(b.rdb.Client, nil)})

	now := task.StepPayload{JobID: "j1", Step: "a", Run: 1, Attempt: 1}
	later := task.StepPayload{JobID: "j2", Step: "a", Run: 1, Attempt: 1}
	at := time.Now().Add(time.Hour)
	snap := []byte(`{"v":1,"job":{"id":"j"}}`)
	relay.Dispatch(ctx, []store.OutboxTask{
		{TaskID: later.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: later.Marshal(), ProcessAt: &at, Carried: snap},
		{TaskID: now.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: now.Marshal(), Carried: snap},
	})
	withSnap := now
	withSnap.Snap = snap
	for id, want := range map[string]task.StepPayload{now.TaskID(): withSnap, later.TaskID(): later} {
		info, err := b.insp.GetTaskInfo("default", id)
		require.NoError(t, err)
		got, err := task.ParseStepPayload(info.Payload)
		require.NoError(t, err)
		require.Equal(t, want, got, id)
	}
	var rings []dispatch.Ring
	select {
	case rings = <-l.C():
	case <-ctx.Done():
		t.Fatal("no ring")
	}
	require.Len(t, rings, 1)
	g := rings[0]
	require.Equal(t, now.TaskID(), g.ID)
	require.Equal(t, "default", g.Queue)
	require.Equal(t, task.TypeStep, g.Type)
	require.JSONEq(t, string(withSnap.Marshal()), string(g.Payload))
	require.WithinDuration(t, time.Now(), time.UnixMicro(g.At), time.Minute)

	// The ringing process's rings of one moment share a message; nothing else was rung.
	bell := dispatch.NewBell(b.rdb.Client, nil)
	bell.Ring(dispatch.Ring{ID: "x", Payload: []byte(`{}`)}, dispatch.Ring{ID: "y", Payload: []byte(`{}`)})
	select {
	case rings = <-l.C():
	case <-ctx.Done():
		t.Fatal("no ring")
	}
	require.Equal(t, []string{"x", "y"}, []string{rings[0].ID, rings[1].ID})
}

// TestBellPassOnIsOpen: rings passed on by their owner arrive marked open, other rings not.
func TestBellPassOnIsOpen(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	l, err := dispatch.ListenBell(ctx, rdb.Client, 8, nil)
	require.NoError(t, err)
	defer l.Close()
	bell := dispatch.NewBell(rdb.Client, nil)
	next := func() dispatch.Ring {
		t.Helper()
		select {
		case rs := <-l.C():
			require.Len(t, rs, 1)
			return rs[0]
		case <-ctx.Done():
			t.Fatal("no ring")
			return dispatch.Ring{}
		}
	}
	bell.Ring(dispatch.Ring{Queue: "default", ID: "rung", At: 1})
	g := next()
	require.Equal(t, "rung", g.ID)
	require.False(t, g.Open)
	bell.PassOn(dispatch.Ring{Queue: "default", ID: "passed", At: 2})
	g = next()
	require.Equal(t, "passed", g.ID)
	require.True(t, g.Open)
}

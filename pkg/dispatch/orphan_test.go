package dispatch_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
)

// A worker that dies after taking a task but before claiming its step leaves the task active in
// Asynq, which hands it out again only a minute or more later; the reconciler enqueues a copy as
// soon as the task's lease stops being renewed, and leaves live workers' tasks alone.
func TestReconcilerRedispatchesTaskOfDeadWorker(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	want := createOne(t, b)
	id := want.TaskID()

	// A worker takes the task and holds it without claiming the step, then dies.
	rec := holdThenDie(t, b, id)
	info, err := b.insp.GetTaskInfo("medium", id+dispatch.OrphanSuffix)
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)
	var p task.StepPayload
	require.NoError(t, json.Unmarshal(info.Payload, &p))
	require.Equal(t, want, p, "same attempt: the claim decides")

	n, err := rec.Sweep(ctx, true)
	require.NoError(t, err)
	require.Zero(t, n, "the copy is enqueued once")
}

// A step whose service was full runs under the id of its scheduled copy once handed out; a worker
// that dies holding that copy before claiming the step leaves it orphaned too, and the reconciler
// enqueues the step again under its own id (it waited a minute or more for Asynq before).
func TestReconcilerRedispatchesWaitCopyOfDeadWorker(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	p := createOne(t, b)
	id := p.TaskID()
	// The task became a scheduled copy (its service was full), which was handed out.
	require.NoError(t, b.insp.DeleteTask("medium", id))
	copyID := dispatch.WaitCopyID(id)
	_, err := b.q.Enqueue(asynq.NewTask(task.TypeStep, p.Marshal()), asynq.Queue("medium"), asynq.TaskID(copyID))
	require.NoError(t, err)

	rec := holdThenDie(t, b, copyID)
	info, err := b.insp.GetTaskInfo("medium", id)
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)

	n, err := rec.Sweep(ctx, true)
	require.NoError(t, err)
	require.Zero(t, n, "enqueued once")
}

// holdThenDie starts a worker that takes the task with id held (the only one in its queue) and
// holds it without claiming its step, checks that a sweep leaves a live worker's task alone, then
// lets the task's lease go stale as if the worker died, and checks that a sweep dispatches the
// step again (once). It returns the reconciler.
func holdThenDie(t *testing.T, b *bundle, held string) *dispatch.Reconciler {
	t.Helper()
	ctx := context.Background()
	taken, release := make(chan struct{}), make(chan struct{})
	srv := asynq.NewServerFromRedisClient(b.rdb.Client, asynq.Config{
		Queues: map[string]int{"medium": 1}, Concurrency: 1, ShutdownTimeout: time.Second, LogLevel: asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(task.TypeStep, func(ctx context.Context, _ *asynq.Task) error {
		close(taken)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	require.NoError(t, srv.Start(mux))
	t.Cleanup(srv.Shutdown)
	t.Cleanup(func() { close(release) })
	select {
	case <-taken:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not take the task")
	}
	rec := dispatch.NewReconciler(b.st, b.rdb.Client, b.q, dispatch.ReconcilerConfig{})
	n, err := rec.Sweep(ctx, true)
	require.NoError(t, err)
	require.Zero(t, n, "a live worker's task is left alone")

	// The worker dies: its lease is no longer renewed. (The live server here renews it every 5s,
	// so the stale lease is set again if a renewal slips in before the sweep.)
	for try := 0; n == 0 && try < 3; try++ {
		stale := float64(time.Now().Add(5 * time.Second).Unix())
		require.NoError(t, b.rdb.Client.ZAdd(ctx, "asynq:{medium}:lease", redis.Z{Score: stale, Member: held}).Err())
		n, err = rec.Sweep(ctx, true)
		require.NoError(t, err)
	}
	require.Equal(t, 1, n, "the step of the orphaned task is dispatched again")
	return rec
}

// createOne creates a job of feature one, whose step's task the relay dispatches, and returns that
// task's payload.
func createOne(t *testing.T, b *bundle) task.StepPayload {
	t.Helper()
	r, err := registry.Parse("r.yaml", []byte(reg), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	orch := orchestrator.New(b.st, r, nil, dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{}), orchestrator.Config{})
	v, _, err := orch.CreateJob(context.Background(), orchestrator.CreateRequest{Feature: "one", Input: json.RawMessage(`{}`)})
	require.NoError(t, err)
	return task.StepPayload{JobID: v.Job.ID, Step: "a", Run: 1, Attempt: 1}
}

// TestReconcilerLeavesStolenTasksAlone: a task a worker took out of its queue for the bell is in no
// queue until the worker claims its step. Even a full sweep leaves it alone then; once its mark
// expired (the worker died before the claim) the step is dispatched again.
func TestReconcilerLeavesStolenTasksAlone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	p := createOne(t, b)
	taken, err := dispatch.Steal(ctx, b.rdb.Client, "medium", p.TaskID())
	require.NoError(t, err)
	require.True(t, taken)
	ttl, err := b.rdb.Client.PTTL(ctx, dispatch.StolenKey("medium", p.TaskID())).Result()
	require.NoError(t, err)
	require.InDelta(t, dispatch.StolenTTL, ttl, float64(time.Second))

	rec := dispatch.NewReconciler(b.st, b.rdb.Client, b.q, dispatch.ReconcilerConfig{})
	n, err := rec.Sweep(ctx, true)
	require.NoError(t, err)
	require.Zero(t, n, "a stolen task is being run")

	require.NoError(t, b.rdb.Client.Del(ctx, dispatch.StolenKey("medium", p.TaskID())).Err())
	n, err = rec.Sweep(ctx, true)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the worker died before the claim: the step is dispatched again")
	info, err := b.insp.GetTaskInfo("medium", p.TaskID())
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)
}

package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

type bundle struct {
	st   store.Store
	rdb  *testinfra.RedisDB
	q    *asynq.Client
	insp *asynq.Inspector
}

func setup(t *testing.T) *bundle {
	t.Helper()
	st, _ := teststore.Postgres(t)
	rdb := testinfra.Redis(t)
	b := &bundle{st: st, rdb: rdb, q: asynq.NewClientFromRedisClient(rdb.Client), insp: asynq.NewInspectorFromRedisClient(rdb.Client)}
	return b
}

func (b *bundle) addOutbox(t *testing.T, n int, prefix string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, b.st.Tx(ctx, func(tx store.Tx) error {
		var rows []store.OutboxTask
		for i := range n {
			p := task.StepPayload{JobID: fmt.Sprintf("%s-%d", prefix, i), Step: "s", Run: 1, Attempt: 1}
			// Older than the relay's MinAge: rows a crashed process left behind.
			rows = append(rows, store.OutboxTask{TaskID: p.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: p.Marshal(), CreatedAt: time.Now().Add(-time.Minute)})
		}
		return tx.InsertOutbox(ctx, rows)
	}))
}

func TestRelayMovesOutboxOnceAndDuplicatesAreHarmless(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.addOutbox(t, 5, "a")
	b.addOutbox(t, 5, "a") // the same task ids again (e.g. a crash after enqueue, before delete)
	r := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{BatchSize: 3})
	total := 0
	for {
		n, err := r.RunOnce(ctx)
		require.NoError(t, err)
		if n == 0 {
			break
		}
		total += n
	}
	require.Equal(t, 10, total)
	left, err := b.st.CountOutbox(ctx)
	require.NoError(t, err)
	require.Zero(t, left)
	info, err := b.insp.GetQueueInfo("default")
	require.NoError(t, err)
	require.Equal(t, 5, info.Pending, "deterministic ids: one task per id")
}

func TestConcurrentRelaysNeverDoubleClaim(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.addOutbox(t, 200, "c")
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for range 3 {
		wg.Go(func() {
			r := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{BatchSize: 10})
			for {
				n, err := r.RunOnce(ctx)
				require.NoError(t, err)
				if n == 0 {
					return
				}
				mu.Lock()
				total += n
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Equal(t, 200, total, "every row claimed exactly once")
	info, err := b.insp.GetQueueInfo("default")
	require.NoError(t, err)
	require.Equal(t, 200, info.Pending)
}

func TestRelayStartNotifyStop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{PollInterval: time.Hour})
	require.NoError(t, r.Start(ctx))
	require.NoError(t, r.Start(ctx), "Start twice is safe")
	b.addOutbox(t, 3, "n")
	r.Notify()
	testinfra.Eventually(t, 10*time.Second, func() bool { return r.Enqueued() == 3 }, "relay woken by Notify")
	require.NoError(t, r.Stop(ctx))
	require.NoError(t, r.Stop(ctx), "Stop twice is safe")
}

const reg = `
services: {sim: {kind: mock}}
features:
  one: {steps: [{name: a, service: sim, queue: medium}, {name: b, service: sim, needs: [a]}]}
`

func TestReconcilerRestoresTasksRedisLost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r, err := registry.Parse("r.yaml", []byte(reg), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	relay := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{})
	orch := orchestrator.New(b.st, r, nil, relay, orchestrator.Config{})
	var ids []string
	for range 4 {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "one", Input: json.RawMessage(`{}`)})
		require.NoError(t, err)
		ids = append(ids, v.Job.ID)
	}
	_, err = relay.RunOnce(ctx)
	require.NoError(t, err)

	rec := dispatch.NewReconciler(b.st, b.rdb.Client, b.q, dispatch.ReconcilerConfig{Interval: time.Hour})
	require.NoError(t, rec.Tick(ctx), "first tick: full sweep, nothing missing")
	require.Zero(t, rec.Fixed())

	// Redis loses everything.
	require.NoError(t, b.rdb.Client.FlushDB(ctx).Err())
	require.NoError(t, rec.Tick(ctx))
	require.EqualValues(t, 4, rec.Fixed(), "epoch key gone: every waiting step re-enqueued at once")
	for _, id := range ids {
		p := task.StepPayload{JobID: id, Step: "a", Run: 1, Attempt: 1}
		info, err := b.insp.GetTaskInfo("medium", p.TaskID())
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State)
	}

	// An archived task (retries exhausted by infrastructure failures) is replaced.
	p := task.StepPayload{JobID: ids[0], Step: "a", Run: 1, Attempt: 1}
	require.NoError(t, b.insp.ArchiveTask("medium", p.TaskID()))
	n, err := rec.Sweep(ctx, true)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	info, err := b.insp.GetTaskInfo("medium", p.TaskID())
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)
}

// TestDispatchHandsOverToTheSender: while the relay runs, concurrent changes' tasks are enqueued by
// its sender (their outbox rows then deleted), and Stop sends what was handed over before it; a
// relay that does not run enqueues in the caller.
func TestDispatchHandsOverToTheSender(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{PollInterval: time.Hour, MinAge: time.Hour})
	committed := func(prefix string, n int) []store.OutboxTask {
		var rows []store.OutboxTask
		for i := range n {
			p := task.StepPayload{JobID: fmt.Sprintf("%s-%d", prefix, i), Step: "s", Run: 1, Attempt: 1}
			rows = append(rows, store.OutboxTask{TaskID: p.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: p.Marshal(), CreatedAt: time.Now()})
		}
		require.NoError(t, b.st.Tx(ctx, func(tx store.Tx) error { return tx.InsertOutbox(ctx, rows) }))
		// InsertOutbox assigned the ids the deleter needs: read them back, as a commit returns them.
		var out []store.OutboxTask
		require.NoError(t, b.st.Tx(ctx, func(tx store.Tx) error {
			all, err := tx.ClaimOutbox(ctx, time.Now().Add(time.Minute), 1000)
			for _, t := range all {
				if strings.Contains(t.TaskID, ":"+prefix+"-") {
					out = append(out, t)
				}
			}
			return err
		}))
		require.Len(t, out, n)
		return out
	}
	pending := func() int {
		info, err := b.insp.GetQueueInfo("default")
		if err != nil {
			return 0
		}
		return info.Pending
	}

	// Not running: the caller enqueues.
	r.Dispatch(ctx, committed("sync", 3))
	require.Equal(t, 3, pending())

	require.NoError(t, r.Start(ctx))
	var wg sync.WaitGroup
	for w := range 20 {
		tasks := committed(fmt.Sprintf("w%d", w), 10)
		wg.Go(func() { r.Dispatch(ctx, tasks) })
	}
	wg.Wait()
	testinfra.Eventually(t, 10*time.Second, func() bool { return pending() == 203 }, "every handed-over task enqueued")
	testinfra.Eventually(t, 10*time.Second, func() bool {
		left, err := b.st.CountOutbox(ctx)
		return err == nil && left == 0
	}, "the rows of enqueued tasks deleted")

	// Handed over just before Stop: sent before Stop returns.
	r.Dispatch(ctx, committed("last", 5))
	require.NoError(t, r.Stop(ctx))
	require.Equal(t, 208, pending())
	left, err := b.st.CountOutbox(ctx)
	require.NoError(t, err)
	require.Zero(t, left)
}

// TestStopDeletesTheRowsOfSentTasks: tasks sent while the deleter gathers ids for its next batch
// have their rows deleted by Stop, which cancels that wait (the batch used to be tried under the
// cancelled context, fail, and be forgotten).
func TestStopDeletesTheRowsOfSentTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{PollInterval: time.Hour, MinAge: time.Hour, DeleteDelay: time.Hour})
	var rows []store.OutboxTask
	for i := range 5 {
		p := task.StepPayload{JobID: fmt.Sprintf("stop-%d", i), Step: "s", Run: 1, Attempt: 1}
		rows = append(rows, store.OutboxTask{TaskID: p.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: p.Marshal(), CreatedAt: time.Now()})
	}
	require.NoError(t, b.st.Tx(ctx, func(tx store.Tx) error { return tx.InsertOutbox(ctx, rows) }))
	var tasks []store.OutboxTask
	require.NoError(t, b.st.Tx(ctx, func(tx store.Tx) error {
		var err error
		tasks, err = tx.ClaimOutbox(ctx, time.Now().Add(time.Minute), 100)
		return err
	}))
	require.Len(t, tasks, 5)

	require.NoError(t, r.Start(ctx))
	r.Dispatch(ctx, tasks)
	testinfra.Eventually(t, 10*time.Second, func() bool {
		info, err := b.insp.GetQueueInfo("default")
		return err == nil && info.Pending == 5
	}, "the tasks sent (their ids wait an hour for the deleter)")
	require.NoError(t, r.Stop(ctx))
	left, err := b.st.CountOutbox(ctx)
	require.NoError(t, err)
	require.Zero(t, left, "Stop deletes the rows of the tasks sent")
}

// TestDispatchParksInTheCaller: with a Route, Dispatch routes each task once, in the caller; a
// task Route parks is sent by the caller itself, its place recorded before Dispatch returns, so
// that it never waits in the sender behind other tasks' parking; the others go to the sender.
func TestDispatchParksInTheCaller(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var routed, placed atomic.Int64
	route := func(_ context.Context, ot store.OutboxTask) (store.OutboxTask, func(context.Context)) {
		routed.Add(1)
		if !strings.Contains(ot.TaskID, ":park-") {
			return ot, nil
		}
		at := time.Now().Add(time.Hour)
		ot.ProcessAt = &at
		return ot, func(context.Context) { placed.Add(1) }
	}
	r := dispatch.NewRelay(b.st, b.rdb.Client, b.q, dispatch.RelayConfig{PollInterval: time.Hour, MinAge: time.Hour, Route: route})
	require.NoError(t, r.Start(ctx))
	defer func() { require.NoError(t, r.Stop(context.Background())) }()
	outbox := func(job string) store.OutboxTask {
		p := task.StepPayload{JobID: job, Step: "s", Run: 1, Attempt: 1}
		return store.OutboxTask{TaskID: p.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: p.Marshal(), CreatedAt: time.Now()}
	}

	r.Dispatch(ctx, []store.OutboxTask{outbox("park-1")})
	require.EqualValues(t, 1, placed.Load(), "the parked task's place is recorded before Dispatch returns")
	info, err := b.insp.GetQueueInfo("default")
	require.NoError(t, err)
	require.Equal(t, 1, info.Scheduled, "the parked task is scheduled at its fallback")

	r.Dispatch(ctx, []store.OutboxTask{outbox("run-1"), outbox("run-2")})
	testinfra.Eventually(t, 10*time.Second, func() bool {
		info, err := b.insp.GetQueueInfo("default")
		return err == nil && info.Pending == 2
	}, "the sender enqueued the tasks to run now")
	require.EqualValues(t, 3, routed.Load(), "each task routed once")
	require.EqualValues(t, 1, placed.Load())
}

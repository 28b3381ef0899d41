package fairness_test

import (
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/fairness"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/waits"
)

const reg = `
services:
  llm: {kind: mock, max_concurrency: 2}
  free: {kind: mock}
features:
  ask:
    steps:
      - {name: a, service: llm}
      - {name: b, service: free}
`

// A step task dispatched while its service has parked steps is parked too: scheduled at the
// fallback, its place recorded once it is enqueued, a note saying why it waits; handing it out moves
// its task to its queue. Other tasks go through untouched.
func TestRouteParksBehindParkedSteps(t *testing.T) {
	t.Parallel()
	r := testinfra.Redis(t)
	ctx := testinfra.Context(t, 30*time.Second)
	rg, err := registry.Parse("r.yaml", []byte(reg), nil)
	require.NoError(t, err)
	q := asynq.NewClientFromRedisClient(r.Client)
	insp := asynq.NewInspectorFromRedisClient(r.Client)
	fair := limiter.NewFairQueue(r.Client, limiter.Config{})
	notes := waits.New(r.Client, "cao:")
	now := time.Now()
	k := fairness.New(fair, q, r.Client, rg, fairness.Config{Notes: notes, Now: func() time.Time { return now }})
	llm := rg.Services["llm"]

	stepTask := func(job, step string) store.OutboxTask {
		p := task.StepPayload{JobID: job, Feature: "ask", Tenant: "acme", Step: step, Run: 1, Attempt: 1}
		return store.OutboxTask{TaskID: p.TaskID(), Queue: "default", TypeName: task.TypeStep, Payload: p.Marshal()}
	}
	// Nothing parked: as is.
	t1 := stepTask("j1", "a")
	out, after := k.Route(ctx, t1)
	require.Equal(t, t1, out)
	require.Nil(t, after)

	// Another tenant's step is parked: j2's step parks behind it.
	_, err = fair.Park(ctx, "llm", limiter.Parked{ID: "other", Tenant: "globex", Value: "default\nmissing-task"}, 1)
	require.NoError(t, err)
	t2 := stepTask("j2", "a")
	out, after = k.Route(ctx, t2)
	require.NotNil(t, after)
	require.NotNil(t, out.ProcessAt)
	require.Equal(t, now.Add(fairness.DefaultFallback), *out.ProcessAt, "scheduled at the fallback")
	p, err := task.ParseStepPayload(out.Payload)
	require.NoError(t, err)
	require.Equal(t, now.UnixMicro(), p.Since, "the payload carries when it first waited")
	require.NoError(t, dispatch.Enqueue(ctx, q, out))
	after(ctx)
	w, err := fair.Waiting(ctx, "llm")
	require.NoError(t, err)
	require.Equal(t, map[string]int{"globex": 1, "acme": 1}, w)
	n, err := notes.Job(ctx, "j2")
	require.NoError(t, err)
	require.Equal(t, waits.Slot, n["a"].Reason)

	// A step of a service without max_concurrency, or a task already scheduled, is not parked.
	t3 := stepTask("j3", "b")
	out, after = k.Route(ctx, t3)
	require.Equal(t, t3, out)
	require.Nil(t, after)

	// Hand-outs: acme's step's task moves from scheduled to pending; globex's task is gone, so its
	// entry is forgotten. Asynq has forgotten its queues meanwhile (Redis lost its data, and clients
	// list a queue once per process): the hand-out lists the queue again.
	require.NoError(t, r.Client.Del(ctx, "asynq:queues").Err())
	k.Unpark(ctx, llm, 2)
	info, err := insp.GetTaskInfo("default", t2.TaskID)
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)
	w, err = fair.Waiting(ctx, "llm")
	require.NoError(t, err)
	require.Empty(t, w)
}

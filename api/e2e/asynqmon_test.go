package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"
)

const truthRegistry = `
services:
  narrow:
    kind: mock
    latency: 1s
    max_concurrency: 1
  broken:
    kind: mock
    latency: 10ms
    fail_times: 99
    retry: {max_attempts: 2, initial_backoff: 100ms, max_backoff: 100ms}
features:
  queued:
    steps: [{name: only, service: narrow}]
  doomed:
    steps: [{name: only, service: broken}]
`

// asynqmon tells the truth: a step waiting for a service slot is a scheduled or pending task, never
// a retry carrying an error; a step that fails for good is a failed task, archived with its error.
func TestAsynqStatesTellTheTruth(t *testing.T) {
	t.Parallel()
	c := newCluster(t, truthRegistry)
	api := c.startAPI()
	cl := c.client(api)
	insp := asynq.NewInspectorFromRedisClient(c.Redis.Client)

	var ids []string
	for range 4 {
		ids = append(ids, cl.createJob("queued", map[string]any{}))
	}
	doomed := cl.createJob("doomed", map[string]any{})
	w1 := c.startWorker("CAO_WORKER_CONCURRENCY=4")
	// One step runs on the single slot and the others wait for it in the worker; stopping the
	// worker puts the waiting ones back as scheduled copies of their tasks.
	require.True(t, pollUntil(60*time.Second, func() bool {
		for _, id := range ids {
			if steps(cl.job(id))["only"]["status"] == "RUNNING" {
				return true
			}
		}
		return false
	}), "one step runs")
	w1.signal(t, syscall.SIGTERM)
	require.NoError(t, w1.wait(t, 60*time.Second))
	var waiting []string
	require.True(t, pollUntil(30*time.Second, func() bool {
		sched, err := insp.ListScheduledTasks("default", asynq.PageSize(100))
		require.NoError(t, err)
		pending, err := insp.ListPendingTasks("default", asynq.PageSize(100))
		require.NoError(t, err)
		waiting = waiting[:0]
		for _, ti := range append(sched, pending...) {
			if strings.Contains(ti.ID, ":wait-") {
				waiting = append(waiting, ti.ID)
			}
		}
		return len(waiting) > 0
	}), "the steps that waited are scheduled (or already due) copies")
	retry, err := insp.ListRetryTasks("default", asynq.PageSize(100))
	require.NoError(t, err)
	require.Empty(t, retry, "a waiting step is never a retry carrying an error")

	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	for _, id := range ids {
		cl.waitJob(id, 60*time.Second, "COMPLETED")
	}
	cl.waitJob(doomed, 60*time.Second, "FAILED")
	var archived []*asynq.TaskInfo
	require.True(t, pollUntil(30*time.Second, func() bool {
		var err error
		archived, err = insp.ListArchivedTasks("default", asynq.PageSize(100))
		require.NoError(t, err)
		return len(archived) == 1
	}), "the failed step's task is archived")
	require.Contains(t, archived[0].ID, doomed)
	require.Contains(t, archived[0].LastErr, "step only failed")
	info, err := insp.GetQueueInfo("default")
	require.NoError(t, err)
	require.Positive(t, info.FailedTotal, "asynqmon's failed count counts the failed step")
}

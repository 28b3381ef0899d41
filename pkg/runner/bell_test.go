package runner_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

// slowPoll makes the workers' Asynq servers look at their empty queues once when they start, then
// only after 1.5 to 4.5 s (Asynq cannot cut that sleep short, so a longer one only slows the tests'
// shutdown): the tasks of jobs created at once are taken through the bell, never by a poll.
func slowPoll(c *runner.Config) { c.IdlePoll = 3 * time.Second }

const bellRegistry = `
services:
  sim: {kind: mock}
  api:
    base_url: %s
    retry: {max_attempts: 1}
features:
  chain:
    steps:
      - {name: a, service: sim}
      - {name: b, service: api, needs: [a]}
      - {name: c, service: sim, needs: [b]}
  fails:
    steps:
      - {name: call, service: api}
`

// tasksVia is how many step tasks the cluster's workers took via (cao_step_tasks_total).
func (c *cluster) tasksVia(via string) int {
	n := 0.0
	for _, nd := range c.nodes {
		n += testutil.ToFloat64(nd.Metrics.StepTasks.WithLabelValues(via))
	}
	return int(n)
}

// TestBellStartsStepsAtOnce: workers whose Asynq servers do not look at their queues for seconds
// start every job's first step through the bell (the next ones are continued in the same handler),
// each exactly once, and leave nothing in the queue.
func TestBellStartsStepsAtOnce(t *testing.T) {
	t.Parallel()
	p := newProvider(t, 0, func(int, int, http.Header) int { return http.StatusOK })
	c := startClusterWith(t, fmt.Sprintf(bellRegistry, p.srv.URL), 2, slowPoll)

	ids := c.create("chain", 6)
	c.waitCompleted(ids, 20*time.Second)
	for _, id := range ids {
		for _, s := range c.job(id).Steps {
			require.Equal(t, 1, s.Attempts, "job %s step %s ran once", id, s.Name)
		}
	}
	require.Len(t, p.snapshot(), len(ids), "one call per job's http step")
	require.Equal(t, len(ids), c.tasksVia(runner.ViaBell), "every job's first task was taken through the bell (cao_step_tasks_total)")
	require.Zero(t, c.tasksVia(runner.ViaPoll), "cao_step_tasks_total")

	info, err := asynq.NewInspectorFromRedisClient(c.rdb).GetQueueInfo(registry.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, info.Pending+info.Active+info.Scheduled+info.Retry+info.Archived, "%+v", info)
}

// TestBellKeepsConcurrency: a worker running as many steps as its concurrency answers a ring when a
// handler frees, while the ring's task is still pending (its Asynq server sleeps until its next poll).
// The service never has more calls in flight than the worker has handlers.
func TestBellKeepsConcurrency(t *testing.T) {
	t.Parallel()
	p := newProvider(t, 100*time.Millisecond, func(int, int, http.Header) int { return http.StatusOK })
	c := startClusterWith(t, fmt.Sprintf(bellRegistry, p.srv.URL), 1, func(rc *runner.Config) {
		slowPoll(rc)
		rc.Concurrency = 1
	})

	ids := c.create("fails", 4)
	c.waitCompleted(ids, 20*time.Second)
	calls := p.snapshot()
	require.Len(t, calls, len(ids))
	for i := 1; i < len(calls); i++ {
		require.False(t, calls[i].at.Before(calls[i-1].answered), "call %d began before call %d was answered", i, i-1)
	}
	require.Equal(t, len(ids), c.tasksVia(runner.ViaBell), "the rings waited for the handler, not for a poll")
}

// TestBellFailedStepArchived: the task of a step that a worker took through the bell and that failed
// for good ends archived with its error and counted failed, as Asynq leaves the tasks it hands out.
func TestBellFailedStepArchived(t *testing.T) {
	t.Parallel()
	p := newProvider(t, 0, func(int, int, http.Header) int { return http.StatusBadRequest })
	c := startClusterWith(t, fmt.Sprintf(bellRegistry, p.srv.URL), 1, slowPoll)

	ids := c.create("fails", 1)
	testinfra.Eventually(t, 20*time.Second, func() bool { return c.job(ids[0]).Job.Status == store.JobFailed }, "the job failed")
	insp := asynq.NewInspectorFromRedisClient(c.rdb)
	var last string
	testinfra.Eventually(t, 30*time.Second, func() bool {
		info, err := insp.GetQueueInfo(registry.DefaultQueue)
		if err != nil {
			return false
		}
		if now := fmt.Sprintf("pending %d active %d scheduled %d retry %d archived %d", info.Pending, info.Active, info.Scheduled, info.Retry, info.Archived); now != last {
			t.Log(now)
			last = now
		}
		return info.Archived == 1 && info.Pending+info.Active+info.Scheduled == 0
	}, "the step's task is archived")
	require.Equal(t, 1, c.tasksVia(runner.ViaBell))
	archived, err := insp.ListArchivedTasks(registry.DefaultQueue)
	require.NoError(t, err)
	require.Len(t, archived, 1)
	require.Contains(t, archived[0].LastErr, "step call failed", "archived with the step's error")
	require.NotContains(t, archived[0].LastErr, "skip retry for the task: skip retry", "the error once")
	info, err := insp.GetQueueInfo(registry.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, 1, info.FailedTotal, "counted failed, as Asynq counts the tasks it hands out")
}

package runner_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

const cancelRegistry = `
services:
  slow: {kind: mock, latency: 5m, timeout: 10m}
features:
  one:
    steps:
      - {name: s, service: slow}
`

// TestCancelReachesTheCallWithoutTheEventStream: a worker hears a cancel requested in another
// process (an API replica) on the cancellations channel and ends its call at once, while it reads
// none of the deployment's other events: only the API replica is subscribed to the events channel.
// The step lease is 10 minutes, so no heartbeat (every third of it) can be what ends the call
// within the test's wait.
func TestCancelReachesTheCallWithoutTheEventStream(t *testing.T) {
	t.Parallel()
	c := startClusterEnv(t, cancelRegistry, 1, map[string]string{"CAO_STEP_LEASE_TTL": "10m"}, nil)
	api := c.startNode("api")
	require.NoError(t, api.StartHub(c.ctx))
	ctx, rdb := c.ctx, c.rdb

	v, _, err := api.Orchestrator.CreateJob(ctx, orchestrator.CreateRequest{Feature: "one", Input: json.RawMessage(`{}`)})
	require.NoError(t, err)
	id := v.Job.ID
	job := func() *orchestrator.JobView {
		v, err := api.Orchestrator.GetJob(ctx, store.AllTenants, id)
		require.NoError(t, err)
		return v
	}
	testinfra.Eventually(t, 30*time.Second, func() bool {
		return len(job().Steps) == 1 && job().Steps[0].Status == store.StepRunning
	}, "the step's call started")
	// The API replica watches the job (its hub reads the events only while a job is watched).
	watch := api.Hub.Subscribe(id, 16)
	defer watch.Close()
	subs := rdb.PubSubNumSub(ctx, events.Channel(rdb), events.CancelChannel(rdb)).Val()
	require.EqualValues(t, 1, subs[events.Channel(rdb)], "only the API replica reads every event")
	require.EqualValues(t, 1, subs[events.CancelChannel(rdb)], "the worker hears cancellations")

	_, err = api.Orchestrator.Cancel(ctx, store.AllTenants, id)
	require.NoError(t, err)
	testinfra.Eventually(t, 30*time.Second, func() bool {
		a := job().Attempts
		return len(a) == 1 && a[0].Status == store.AttemptCancelled && a[0].FinishedAt != nil
	}, "the call ended as cancelled (the lease is 10m: only the cancellations channel can have told the worker)")
	require.Equal(t, store.JobCancelled, job().Job.Status)
}

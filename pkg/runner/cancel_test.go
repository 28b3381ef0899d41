package runner_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
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
	reg, err := registry.Parse("cancel.yaml", []byte(cancelRegistry), nil)
	require.NoError(t, err)
	st, _ := teststore.Postgres(t)
	rd := testinfra.Redis(t)
	ctx := testinfra.Context(t, 2*time.Minute)
	cfg, err := config.Parse(func(k string) (string, bool) { return "10m", k == "CAO_STEP_LEASE_TTL" })
	require.NoError(t, err)
	start := func(name string) *node.Node {
		opt, err := redis.ParseURL(rd.URL)
		require.NoError(t, err)
		rdb := redis.NewClient(opt)
		n := node.Build(cfg, slog.New(slog.DiscardHandler), name+"-"+testinfra.RandomSuffix(), reg, st, rdb)
		n.OnClose(rdb.Close)
		require.NoError(t, n.Start(ctx))
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			require.NoError(t, n.Stop(sctx))
		})
		return n
	}
	api := start("api")
	require.NoError(t, api.StartHub(ctx))
	worker := start("worker")
	r := worker.NewRunner(runner.Config{
		Queues: map[string]int{registry.DefaultQueue: 1}, Concurrency: 4,
		PollInterval: 20 * time.Millisecond, BusyDelay: 20 * time.Millisecond, ShutdownGrace: time.Second,
	})
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, r.Stop(sctx))
	})

	subs := rd.Client.PubSubNumSub(ctx, events.Channel(rd.Client), events.CancelChannel(rd.Client)).Val()
	require.EqualValues(t, 1, subs[events.Channel(rd.Client)], "only the API replica reads every event")
	require.EqualValues(t, 1, subs[events.CancelChannel(rd.Client)], "the worker hears cancellations")

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

	_, err = api.Orchestrator.Cancel(ctx, store.AllTenants, id)
	require.NoError(t, err)
	testinfra.Eventually(t, 30*time.Second, func() bool {
		a := job().Attempts
		return len(a) == 1 && a[0].Status == store.AttemptCancelled && a[0].FinishedAt != nil
	}, "the call ended as cancelled (the lease is 10m: only the cancellations channel can have told the worker)")
	require.Equal(t, store.JobCancelled, job().Job.Status)
}

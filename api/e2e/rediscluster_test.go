package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/redisconn/redisconntest"
	"github.com/cao-run/cao/pkg/testinfra"
)

// redisClusterRegistry has a service capped at 2 calls at once (the counting service), a mock, a DAG
// feature that fans out to three capped steps, and a feature whose "hold" step the test holds.
func redisClusterRegistry(baseURL string) string {
	body := `{method: POST, path: "/call/{{ .step.name }}", body: {job: "{{ .job.id }}", step: "{{ .step.name }}"}}`
	return fmt.Sprintf(`
services:
  capped:
    kind: http
    base_url: %s
    timeout: 30s
    max_concurrency: 2
    lease_ttl: 10s
    retry: {max_attempts: 3, initial_backoff: 200ms, max_backoff: 1s}
  sim:
    kind: mock
    latency: 20ms
features:
  dag:
    steps:
      - {name: plan, service: sim, queue: heavy}
      - {name: a, service: capped, queue: medium, needs: [plan], request: %[2]s}
      - {name: b, service: capped, queue: heavy, needs: [plan], request: %[2]s}
      - {name: c, service: capped, needs: [plan], request: %[2]s}
      - {name: merge, service: sim, needs: [a, b, c]}
  watched:
    steps:
      - {name: first, service: sim}
      - {name: hold, service: capped, needs: [first], request: %[2]s}
      - {name: last, service: sim, needs: [hold]}
`, baseURL, body)
}

// CAO on a three-master Redis Cluster (CAO_REDIS_URL=redis+cluster://...): two API replicas and two
// workers run DAG jobs to completion, the fleet-wide semaphore holds max_concurrency, asynqmon sees the
// cluster, a WebSocket ticket issued by one replica is redeemed by the other, and a watcher on replica
// 2 receives, live, the events of a job created on replica 1 (fan-out over the cluster's pub/sub).
//
// It runs alone, before the parallel tests: it bounds how late a live event arrives, which the load
// of the other tests (three Redis servers here, besides) made miss by a few hundred ms.
func TestRedisClusterFleet(t *testing.T) { //nolint:paralleltest // runs alone: see above
	rc := redisconntest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	svc := newCountingService(t, 100*time.Millisecond)
	// The harness sets CAO_REDIS_URL to the shared test Redis first; os/exec keeps the last value of a
	// duplicated variable, so the cluster's URL wins (checked below: the test Redis stays empty).
	c := newCluster(t, redisClusterRegistry(svc.URL()), "CAO_REDIS_URL="+rc.URL)
	api1, api2 := c.startAPI(), c.startAPI()
	c.startWorker("CAO_WORKER_CONCURRENCY=8")
	c.startWorker("CAO_WORKER_CONCURRENCY=8")
	cl1, cl2 := c.client(api1), c.client(api2)

	// An API replica subscribes to the deployment's event channel on the cluster while a client
	// watches a job through it, the workers to its cancellations: cluster has database 0 only, so the
	// channels are cao:{db0}:events and cao:{db0}:cancels. A subscriber of the test's own sees the
	// publishes.
	const channel, cancels = "cao:{db0}:events", "cao:{db0}:cancels"
	sub := rc.Client.Subscribe(ctx, channel)
	defer sub.Close()
	_, err := sub.Receive(ctx)
	require.NoError(t, err)
	var published sync.Map // job id -> statuses of its job events seen on the channel
	go func() {
		for m := range sub.Channel() {
			msgs, err := events.Decode([]byte(m.Payload))
			if err != nil {
				continue
			}
			for _, ev := range msgs {
				if ev.Type == "job" {
					published.Store(ev.JobID+"/"+ev.Status, true)
				}
			}
		}
	}()
	numsub := func() (subscribers, listeners int64) {
		for _, n := range rc.Nodes {
			counts, err := n.PubSubNumSub(ctx, channel, cancels).Result()
			require.NoError(t, err)
			subscribers += counts[channel]
			listeners += counts[cancels]
		}
		return subscribers, listeners
	}
	subscribers, listeners := numsub()
	require.Equal(t, int64(1), subscribers, "only the test reads %s while no job is watched", channel)
	require.Equal(t, int64(2), listeners, "2 workers subscribe to %s", cancels)

	// A job created on replica 1, its step held by the service, watched on replica 2 with a ticket
	// replica 1 issued (tickets live in the cluster).
	hold := svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "hold" })
	watched := cl1.createJob("watched", map[string]any{})
	tk, err := cl1.sdk().Ticket(context.Background(), watched)
	require.NoError(t, err)
	conn, status := wsDial(t, cl2.base, watched, "ticket="+tk.Ticket, nil)
	require.Equal(t, http.StatusSwitchingProtocols, status)
	snap := wsFirst(t, conn)
	require.Equal(t, "snapshot", snap["type"])
	subscribers, _ = numsub()
	require.Equal(t, int64(2), subscribers, "the watched replica reads %s too", channel)
	// The watcher reads from now on, stamping each event when it arrives (not when the test gets to
	// it after creating the DAG jobs below), up to the job's end.
	type received struct {
		msg map[string]any
		at  time.Time
		err error
	}
	arrivals := make(chan received, 256)
	go func() {
		defer close(arrivals)
		for {
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			_, data, err := conn.Read(rctx)
			rcancel()
			var m map[string]any
			if err == nil {
				err = json.Unmarshal(data, &m)
			}
			arrivals <- received{m, time.Now(), err}
			if err != nil || (m["type"] == "job" && m["status"] == "COMPLETED") {
				return
			}
		}
	}()
	hold.wait(t, 20*time.Second)

	// The DAG jobs, created on both replicas, while the watched job waits.
	var ids []string
	for i := range 8 {
		cl := []*client{cl1, cl2}[i%2]
		ids = append(ids, cl.createJob("dag", map[string]any{}))
	}
	hold.Release()

	// The watcher receives every event after its snapshot up to the job's end. Each arrives well within
	// the WebSocket server's 3s poll of the event log, so it came over pub/sub: within 1s of its commit.
	var live []received
	for r := range arrivals {
		require.NoError(t, r.err, "watcher on replica 2: %d events so far", len(live))
		live = append(live, r)
	}
	seenSteps := map[string]bool{}
	for _, r := range live {
		at := parseTime(t, r.msg["at"])
		require.Less(t, r.at.Sub(at), time.Second, "event %v reached the watcher %s after its commit", r.msg, r.at.Sub(at))
		if r.msg["type"] == "step" {
			seenSteps[fmt.Sprint(r.msg["step"], "/", r.msg["status"])] = true
		}
	}
	require.True(t, seenSteps["hold/SUCCEEDED"], "live step events: %v", seenSteps)
	require.True(t, seenSteps["last/SUCCEEDED"], "live step events: %v", seenSteps)
	testinfra.Eventually(t, 10*time.Second, func() bool {
		_, ok := published.Load(watched + "/COMPLETED")
		return ok
	}, "the job's end published on the cluster's %s", channel)

	// Every DAG job completes, across both workers, and the service never saw more than 2 calls.
	workers := map[string]bool{}
	for _, id := range ids {
		j := cl1.waitJob(id, 45*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "COMPLETED", j["status"], "job %s", id)
		for name, s := range steps(j) {
			require.Equal(t, "SUCCEEDED", s["status"], name)
			for _, a := range s["attempt_history"].([]any) {
				workers[a.(map[string]any)["worker_id"].(string)] = true
			}
		}
	}
	require.Len(t, workers, 2, "both workers ran steps: %v", workers)
	require.Equal(t, 2, svc.Peak(), "max_concurrency 2 was reached and never exceeded")
	require.Equal(t, 3*len(ids)+1, svc.Answered(), "one call per capped step")

	// asynqmon on replica 2 inspects the cluster.
	code, body := cl2.do("GET", "/monitoring/api/redis_info", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Equal(t, true, body["cluster"], "asynqmon got a cluster client")
	code, body = cl2.do("GET", "/monitoring/api/queues", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Len(t, body["queues"], 3)

	// CAO's keys are in the cluster; the test Redis of the harness stayed empty.
	queues, err := rc.Client.SMembers(ctx, "asynq:queues").Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"heavy", "medium", "default"}, queues)
	require.EqualValues(t, 1, rc.Client.Exists(ctx, "cao:sem:{capped}:fence").Val(), "the semaphore lives in the cluster")
	require.EqualValues(t, 1, rc.Client.Exists(ctx, "cao:maintenance:leader").Val(), "a maintenance leader holds its lease")
	require.Zero(t, c.Redis.Client.DBSize(ctx).Val(), "nothing went to the harness's Redis")
}

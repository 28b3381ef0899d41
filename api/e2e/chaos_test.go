package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/stretchr/testify/require"
)

// The chaos suite runs batches of multi-step jobs against the counting service while it kills,
// stops and cuts real processes and backends, then checks the guarantees of CONTRACT.md: every job
// completes, no SUCCEEDED step is called again, every call of a run carries the run's
// Idempotency-Key, each key's effect happens once, and max_concurrency holds (while Redis keeps its
// data).

// chaosRow is one line of the suite's summary table.
type chaosRow struct {
	Scenario   string
	Jobs       int
	Completed  int
	Lost       int
	DupEffects int // steps whose effect happened under more than one key, plus keys applied twice
	DupCalls   int // calls beyond the first of a key (retries after faults: expected, harmless)
	LateCalls  int // calls of a key that arrived after its step had SUCCEEDED
	Peak       int
	Limit      int
	LimitHolds bool          // whether the contract promises the limit in this scenario
	Recovery   time.Duration // the slowest recovery of the scenario's faults
	Total      time.Duration // from the first job submitted to the last job completed
	Faults     []chaosFault
	Status     string
}

// chaosFault is one injected failure.
type chaosFault struct {
	What   string
	At     time.Time
	Worker string // the killed or stopped worker's id; empty for a backend fault
	// Orphans means the worker held tasks it had not claimed yet: recovery includes their re-dispatch.
	Orphans bool
}

func TestChaos(t *testing.T) {
	t.Parallel()
	scenarios := []struct {
		name string
		run  func(t *testing.T, row *chaosRow)
	}{
		{"KillWorkers", chaosKillWorkers},
		{"StopWorkerBeyondLease", chaosStopWorker},
		{"RedisRestartWithoutPersistence", chaosRedisRestart},
		{"PostgresRestart", chaosPostgresRestart},
		{"KillAPIAndWorkerReplicas", chaosKillReplicas},
	}
	rows := make([]*chaosRow, len(scenarios))
	// The scenarios use separate backends: run them at once. t.Run may be called from several
	// goroutines; subtests that do not call t.Parallel are not bound by -parallel.
	var wg sync.WaitGroup
	for i, sc := range scenarios {
		rows[i] = &chaosRow{Scenario: sc.name}
		wg.Go(func() {
			ok := t.Run(sc.name, func(t *testing.T) {
				rows[i].Status = "FAIL"
				sc.run(t, rows[i])
			})
			if ok && rows[i].Status != "" {
				rows[i].Status = "ok"
			}
		})
	}
	wg.Wait()
	rows = slices.DeleteFunc(rows, func(r *chaosRow) bool { return r.Status == "" }) // filtered out by -run
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintln(tw, "scenario\tjobs\tcompleted\tlost\tdup effects\tdup calls\tlate calls\tpeak/limit\tmax recovery\ttotal\tresult\t")
	for _, r := range rows {
		limit := fmt.Sprintf("%d/%d", r.Peak, r.Limit)
		if !r.LimitHolds {
			limit += " (n/a)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.Jobs, r.Completed, r.Lost,
			r.DupEffects, r.DupCalls, r.LateCalls, limit, r.Recovery.Round(10*time.Millisecond),
			r.Total.Round(10*time.Millisecond), r.Status)
	}
	_ = tw.Flush()
	for _, r := range rows {
		for _, f := range r.Faults {
			fmt.Fprintf(&buf, "  %s: %s at %s %s\n", r.Scenario, f.What, f.At.Format("15:04:05.000"), f.Worker)
		}
	}
	fmt.Printf("\n=== chaos summary\n%s\n", buf.String())
}

// chaosBatch is a set of jobs submitted together and checked together.
type chaosBatch struct {
	t       *testing.T
	c       *cluster
	svc     *countingService
	row     *chaosRow
	feature string
	start   time.Time
	done    time.Time
	mu      sync.Mutex
	ids     []string
	faults  []chaosFault
}

func newChaosBatch(t *testing.T, c *cluster, svc *countingService, row *chaosRow, feature string, limit int, limitHolds bool) *chaosBatch {
	row.Limit, row.LimitHolds = limit, limitHolds
	return &chaosBatch{t: t, c: c, svc: svc, row: row, feature: feature}
}

// submit creates n jobs, spread over the clients.
func (b *chaosBatch) submit(n int, cls ...*client) {
	b.t.Helper()
	if b.start.IsZero() {
		b.start = time.Now()
	}
	for i := range n {
		id := cls[i%len(cls)].createJob(b.feature, map[string]any{"n": i})
		b.mu.Lock()
		b.ids = append(b.ids, id)
		b.mu.Unlock()
	}
}

// addFault records an injected failure.
func (b *chaosBatch) addFault(what, worker string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := chaosFault{What: what, At: time.Now(), Worker: worker}
	b.faults = append(b.faults, f)
	b.t.Logf("fault: %s %s", what, worker)
}

// killOwner kills -9 the worker running the call and records the fault.
func (b *chaosBatch) killOwner(cl *client, call *csCall, what string) {
	b.t.Helper()
	id := attemptWorkerID(b.t, cl, call.Job, call.Step, call.Run, call.Attempt)
	p := b.c.workerByID(id)
	require.NotNil(b.t, p, "worker %s", id)
	if !p.running() {
		b.t.Logf("%s: worker %s already dead", what, id)
		return
	}
	p.signal(b.t, syscall.SIGKILL)
	b.addFault(what, id)
}

// kill kills -9 a worker process and records the fault.
func (b *chaosBatch) kill(p *proc, what string) {
	b.t.Helper()
	p.signal(b.t, syscall.SIGKILL)
	b.addFault(what, fmt.Sprintf("worker-*-%d", p.cmd.Process.Pid))
}

// waitDone waits until every job is terminal (or d passes) using the list endpoint.
func (b *chaosBatch) waitDone(cl *client, d time.Duration) {
	b.t.Helper()
	b.mu.Lock()
	ids := append([]string{}, b.ids...)
	b.mu.Unlock()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		terminal := map[string]bool{}
		for _, st := range []string{"COMPLETED", "FAILED", "CANCELLED"} {
			code, body := cl.do("GET", "/api/v1/jobs?limit=200&feature="+b.feature+"&status="+st, nil)
			if code != http.StatusOK {
				continue
			}
			for _, j := range body["jobs"].([]any) {
				terminal[j.(map[string]any)["id"].(string)] = true
			}
		}
		n := 0
		for _, id := range ids {
			if terminal[id] {
				n++
			}
		}
		if n == len(ids) {
			b.done = time.Now()
			return
		}
		if time.Now().After(deadline) {
			b.t.Logf("only %d of %d jobs ended within %s", n, len(ids), d)
			return
		}
		<-tick.C
	}
}

// verify waits for the batch and checks the guarantees, filling the summary row.
func (b *chaosBatch) verify(cl *client, d time.Duration) {
	t := b.t
	t.Helper()
	b.waitDone(cl, d)
	b.mu.Lock()
	ids := append([]string{}, b.ids...)
	faults := append([]chaosFault{}, b.faults...)
	b.mu.Unlock()
	row := b.row
	row.Jobs, row.Faults = len(ids), faults
	if !b.done.IsZero() {
		row.Total = b.done.Sub(b.start)
	}

	calls := b.svc.Calls()
	byKey := map[string][]csCall{}
	appliedKeys := map[string]map[string]int{} // job/step -> key -> effects
	for _, c := range calls {
		require.Equal(t, fmt.Sprintf("%s/%s/%d", c.Job, c.Step, c.Run), c.Key, "call %d must carry the Idempotency-Key of its run", c.Seq)
		require.Equal(t, 1, c.Run, "call %d: no resume happened, every call belongs to run 1", c.Seq)
		byKey[c.Key] = append(byKey[c.Key], c)
		if c.Applied {
			js := c.Job + "/" + c.Step
			if appliedKeys[js] == nil {
				appliedKeys[js] = map[string]int{}
			}
			appliedKeys[js][c.Key]++
		}
	}
	for _, keys := range appliedKeys {
		row.DupEffects += len(keys) - 1
		for _, n := range keys {
			row.DupEffects += n - 1
		}
	}
	row.Peak = b.svc.Peak()

	views := map[string]map[string]any{}
	for _, id := range ids {
		j := cl.job(id)
		views[id] = j
		if j["status"] != "COMPLETED" {
			row.Lost++
			continue
		}
		row.Completed++
		for name, s := range steps(j) {
			require.Equal(t, "SUCCEEDED", s["status"], "job %s step %s", id, name)
			key := fmt.Sprintf("%s/%s/%d", id, name, int(s["run"].(float64)))
			require.NotEmpty(t, byKey[key], "step %s of job %s succeeded without calling the service", name, id)
			finished := parseTime(t, s["finished_at"])
			for _, c := range byKey[key] {
				if c.Arrived.After(finished) {
					row.LateCalls++
					t.Errorf("call %d (attempt %d) of %s arrived %s after the step SUCCEEDED", c.Seq, c.Attempt, key, c.Arrived.Sub(finished))
				}
			}
			row.DupCalls += len(byKey[key]) - 1
			// The recorded output is the answer to the attempt that won.
			out := s["output"].(map[string]any)
			require.Equal(t, key, out["key"], "job %s step %s output", id, name)
			won := 0
			for _, h := range s["attempt_history"].([]any) {
				m := h.(map[string]any)
				if m["status"] == "succeeded" {
					require.Zero(t, won, "job %s step %s has two succeeded attempts", id, name)
					won = int(m["attempt"].(float64))
				}
			}
			require.EqualValues(t, won, out["attempt"], "job %s step %s: output comes from the winning attempt", id, name)
		}
	}

	// Recovery: a killed or stopped worker's attempts were re-run; how long after the fault did the
	// re-run call the service? Backend faults: how long until the batch completed.
	for _, f := range faults {
		var rec time.Duration
		if f.Worker == "" {
			if !b.done.IsZero() {
				rec = b.done.Sub(f.At)
			}
		} else {
			for id, j := range views {
				for name, s := range steps(j) {
					for _, h := range s["attempt_history"].([]any) {
						m := h.(map[string]any)
						if !workerIDMatches(f.Worker, m["worker_id"].(string)) || m["status"] == "succeeded" {
							continue
						}
						key := fmt.Sprintf("%s/%s/%d", id, name, int(m["run"].(float64)))
						for _, c := range byKey[key] {
							if c.Attempt > int(m["attempt"].(float64)) && c.Arrived.After(f.At) {
								rec = max(rec, c.Arrived.Sub(f.At))
								break
							}
						}
					}
				}
			}
		}
		if f.Orphans {
			// Tasks the killed worker had taken but not claimed are re-dispatched by the reconciler:
			// its first "re-enqueued lost tasks" after the kill.
			for _, l := range b.c.logLines("re-enqueued lost tasks") {
				at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(strings.Fields(l)[1], "time="))
				if err == nil && at.After(f.At) {
					t.Logf("after %s, tasks taken but never claimed re-enqueued after %s", f.What, at.Sub(f.At).Round(time.Millisecond))
					rec = max(rec, at.Sub(f.At))
					break
				}
			}
		}
		t.Logf("recovery after %s: %s", f.What, rec.Round(time.Millisecond))
		row.Recovery = max(row.Recovery, rec)
	}
	t.Logf("%s: %d jobs, %d completed, %d calls, peak %d/%d, total %s", row.Scenario, row.Jobs, row.Completed,
		len(calls), row.Peak, row.Limit, row.Total.Round(time.Millisecond))

	require.Zero(t, row.Lost, "every job completes")
	require.Zero(t, row.DupEffects, "no effect happens twice")
	require.Zero(t, row.LateCalls, "no SUCCEEDED step is called again")
	if row.LimitHolds {
		require.LessOrEqual(t, row.Peak, row.Limit, "max_concurrency holds across the fleet")
	}
}

// workerIDMatches compares a recorded worker id with a fault's (which may be worker-*-PID).
func workerIDMatches(pattern, id string) bool {
	if rest, ok := strings.CutPrefix(pattern, "worker-*-"); ok {
		return strings.HasSuffix(id, "-"+rest)
	}
	return pattern == id
}

// waitStepStatus polls the job until the step has the status and returns the job.
func waitStepStatus(t *testing.T, cl *client, id, step, status string, d time.Duration) map[string]any {
	t.Helper()
	var j map[string]any
	testinfra.Eventually(t, d, func() bool {
		j = cl.job(id)
		return steps(j)[step]["status"] == status
	}, "%s", fmt.Sprintf("step %s of job %s to be %s", step, id, status))
	return j
}

// chaosKillWorkers kills -9 workers before, during and after a service call, and right after a
// step's SUCCEEDED commit.
func chaosKillWorkers(t *testing.T, row *chaosRow) {
	svc := newCountingService(t, 250*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "3s"), "CAO_STEP_LEASE_TTL=2s")
	api := c.startAPI()
	cl := c.client(api)
	b := newChaosBatch(t, c, svc, row, "fanout", 4, true)

	// Before the call: the jobs' first steps are queued when W1 starts; it dequeues up to 8 tasks
	// and is killed at its first call, with most of its tasks taken but not yet called.
	b.submit(20, cl)
	first := svc.trap(csNotifyArrival, func(*csCall) bool { return true })
	w1 := c.startWorker("CAO_WORKER_CONCURRENCY=8")
	first.wait(t, 30*time.Second)
	b.kill(w1, "kill -9 before the calls (tasks dequeued, not yet claimed)")
	b.faults[len(b.faults)-1].Orphans = true
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	c.startWorker("CAO_WORKER_CONCURRENCY=4")

	// During the call: the service holds the call; its worker dies.
	during := svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "b" })
	call := during.wait(t, 30*time.Second)
	b.killOwner(cl, call, "kill -9 during the call")
	during.Release()
	c.startWorker("CAO_WORKER_CONCURRENCY=4")

	// After the call: the effect is applied, the answer never reaches the worker.
	after := svc.trap(csHoldAfterEffect, func(c *csCall) bool { return c.Step == "c" })
	call = after.wait(t, 30*time.Second)
	b.killOwner(cl, call, "kill -9 after the call (effect applied, answer lost)")
	after.Release()
	c.startWorker("CAO_WORKER_CONCURRENCY=4")

	// After the commit: kill the worker right after the step's SUCCEEDED is committed.
	answered := svc.trap(csNotifyAnswered, func(*csCall) bool { return true })
	call = answered.wait(t, 30*time.Second)
	waitStepStatus(t, cl, call.Job, call.Step, "SUCCEEDED", 10*time.Second)
	b.killOwner(cl, call, "kill -9 after the SUCCEEDED commit")
	c.startWorker("CAO_WORKER_CONCURRENCY=4")

	b.verify(cl, 90*time.Second)
	// How the work came back: steps reclaimed by the reaper (lost attempts), and tasks taken by a
	// killed worker before it claimed their steps, re-enqueued by the reconciler.
	for _, l := range c.logLines("re-queued steps of lost workers", "re-enqueued lost tasks") {
		t.Log(l)
	}
}

// logLines returns the log lines of every process that contain one of the strings.
func (c *cluster) logLines(subs ...string) []string {
	c.mu.Lock()
	procs := append([]*proc{}, c.procs...)
	c.mu.Unlock()
	var out []string
	for _, p := range procs {
		raw, _ := os.ReadFile(p.log)
		for _, l := range strings.Split(string(raw), "\n") {
			for _, sub := range subs {
				if strings.Contains(l, sub) {
					out = append(out, p.name+": "+l)
					break
				}
			}
		}
	}
	return out
}

// chaosStopWorker stops a worker (SIGSTOP) past its step lease and semaphore lease while its call
// is answered, lets another worker re-run the step, then continues it: its late result is fenced.
func chaosStopWorker(t *testing.T, row *chaosRow) {
	const semTTL = 3 * time.Second
	svc := newCountingService(t, 200*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, semTTL.String()), "CAO_STEP_LEASE_TTL=2s")
	api := c.startAPI()
	cl := c.client(api)
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	b := newChaosBatch(t, c, svc, row, "fanout", 4, true)

	held := svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "b" })
	b.submit(12, cl)
	call := held.wait(t, 30*time.Second)
	id := attemptWorkerID(t, cl, call.Job, call.Step, call.Run, call.Attempt)
	stopped := c.workerByID(id)
	require.NotNil(t, stopped)
	stopped.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() { _ = stopped.cmd.Process.Signal(syscall.SIGCONT) })
	b.addFault("SIGSTOP beyond the step and semaphore leases", id)
	stoppedAt := time.Now()
	t.Cleanup(func() {
		if t.Failed() { // the state to look at when recovery did not happen in time
			t.Logf("job %s at failure: %v", call.Job, cl.job(call.Job))
			t.Logf("calls of %s: %+v", call.Key, keyCalls(svc, call.Key))
		}
	})
	// The service answers the stopped worker (the effect is applied by its attempt); the answer
	// waits in the stopped process's socket.
	held.Release()
	again := svc.waitCall(t, 30*time.Second, "the same run re-run by another worker", func(c csCall) bool {
		return c.Key == call.Key && c.Attempt > call.Attempt && !c.Ended.IsZero()
	})
	require.True(t, again.Replayed, "the re-run reuses the key: a duplicate call, not a second effect: %+v", keyCalls(svc, call.Key))
	waitStepStatus(t, cl, call.Job, call.Step, "SUCCEEDED", 30*time.Second)
	testinfra.Eventually(t, 10*time.Second, func() bool {
		return time.Since(stoppedAt) > semTTL+500*time.Millisecond
	}, "%s", "the semaphore lease of the stopped worker to expire")
	require.NoError(t, stopped.cmd.Process.Signal(syscall.SIGCONT))
	testinfra.Eventually(t, 20*time.Second, func() bool {
		for _, l := range c.logLines("late result rejected") {
			if strings.Contains(l, "job_id="+call.Job) && strings.Contains(l, "step="+call.Step) {
				return true
			}
		}
		return false
	}, "%s", "the stopped worker's late result to be rejected")

	s := steps(cl.job(call.Job))[call.Step]
	require.EqualValues(t, again.Attempt, s["output"].(map[string]any)["attempt"], "the output is the winner's")
	for _, h := range s["attempt_history"].([]any) {
		m := h.(map[string]any)
		if int(m["attempt"].(float64)) == call.Attempt {
			require.Equal(t, "lost", m["status"], "the stopped attempt is recorded lost, not succeeded: %v", m)
		}
	}
	b.verify(cl, 90*time.Second)
}

// chaosRedisRestart kills -9 the cluster's private redis-server mid-batch and starts it again
// empty on the same port: the reconciler re-enqueues the lost tasks from Postgres.
func chaosRedisRestart(t *testing.T, row *chaosRow) {
	rds := startPrivateRedis(t)
	svc := newCountingService(t, 250*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "3s"), "CAO_STEP_LEASE_TTL=2s", "CAO_REDIS_URL="+rds.URL())
	api := c.startAPI()
	cl := c.client(api)
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	b := newChaosBatch(t, c, svc, row, "fanout", 4, false)

	b.submit(16, cl)
	testinfra.Eventually(t, 30*time.Second, func() bool { return svc.Answered() >= 8 }, "%s", "8 answered calls")
	held := svc.trap(csHoldBeforeEffect, func(*csCall) bool { return true })
	call := held.wait(t, 30*time.Second)
	rds.kill()
	rds.start()
	b.addFault("redis-server killed -9 and restarted empty", "")
	upAt := time.Now()
	// The held call spans the restart and its service slot vanished with Redis's data: its worker
	// abandons it when the slot cannot be renewed. That must not fail the step.
	abandoned := pollUntil(5*time.Second, func() bool {
		for _, c := range svc.Calls() {
			if c.Seq == call.Seq && c.Cancelled {
				return true
			}
		}
		return false
	})
	t.Logf("call in flight across the restart abandoned by its worker: %v", abandoned)
	held.Release()
	before := len(svc.Calls())
	next := svc.waitCall(t, 30*time.Second, "a call after Redis came back", func(c csCall) bool { return c.Seq > before })
	t.Logf("first call %s after Redis came back", next.Arrived.Sub(upAt).Round(time.Millisecond))
	b.verify(cl, 90*time.Second)
	require.Less(t, b.done.Sub(upAt), 45*time.Second, "lost tasks are re-enqueued within a bounded time")
}

// chaosResponse is an HTTP answer with its headers.
type chaosResponse struct {
	status int
	header http.Header
	body   map[string]any
}

func chaosDo(t *testing.T, method, url string, body string) chaosResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := chaosResponse{status: resp.StatusCode, header: resp.Header}
	require.NoError(t, json.Unmarshal(raw, &out.body), "%s %s: %s", method, url, raw)
	return out
}

// requireUnavailable checks the contract's answer while a backend is down.
func requireUnavailable(t *testing.T, r chaosResponse, what string) {
	t.Helper()
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s: %v", what, r.body)
	require.NotEmpty(t, r.header.Get("Retry-After"), "%s: Retry-After", what)
	require.Equal(t, false, r.body["success"], "%s: %v", what, r.body)
	e, ok := r.body["error"].(map[string]any)
	require.True(t, ok, "%s: error envelope: %v", what, r.body)
	require.Equal(t, "service_unavailable", e["code"], "%s", what)
	require.NotEmpty(t, e["message"], "%s", what)
}

// chaosPostgresRestart cuts every process from Postgres mid-batch (a TCP proxy closes all
// connections and the port), checks the API's 503 answers, and restores it.
func chaosPostgresRestart(t *testing.T, row *chaosRow) {
	svc := newCountingService(t, 250*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "3s"), "CAO_STEP_LEASE_TTL=2s")
	proxy, pgURL := newPGProxy(t, c.PG)
	c.env = append(c.env, "CAO_DATABASE_URL="+pgURL)
	api := c.startAPI()
	cl := c.client(api)
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	b := newChaosBatch(t, c, svc, row, "fanout", 4, true)

	b.submit(16, cl)
	testinfra.Eventually(t, 30*time.Second, func() bool { return svc.Answered() >= 8 }, "%s", "8 answered calls")
	held := svc.trap(csHoldBeforeEffect, func(*csCall) bool { return true })
	call := held.wait(t, 30*time.Second)
	base := "http://" + api.Addr
	proxy.down()
	downAt := time.Now()
	t.Log("postgres down")
	requireUnavailable(t, chaosDo(t, "POST", base+"/api/v1/jobs", `{"feature_name": "fanout", "input_data": {}}`), "POST /api/v1/jobs")
	requireUnavailable(t, chaosDo(t, "GET", base+"/api/v1/jobs/"+b.ids[0], ""), "GET /api/v1/jobs/{id}")
	h := chaosDo(t, "GET", base+"/health/services", "")
	require.Equal(t, http.StatusServiceUnavailable, h.status, "%v", h.body)
	require.Equal(t, "down", h.body["status"])
	require.Equal(t, "down", h.body["postgres"].(map[string]any)["status"])
	// Stay down past the step lease: running steps cannot heartbeat.
	testinfra.Eventually(t, 10*time.Second, func() bool { return time.Since(downAt) > 3*time.Second }, "%s", "postgres down for 3s")
	// The held call's worker could not renew the step's lease: it abandoned the call, which must
	// not fail the step.
	abandoned := pollUntil(5*time.Second, func() bool {
		for _, c := range svc.Calls() {
			if c.Seq == call.Seq && c.Cancelled {
				return true
			}
		}
		return false
	})
	t.Logf("call in flight during the outage abandoned by its worker: %v", abandoned)
	held.Release()
	proxy.up()
	b.addFault("postgres down >=3s (all connections cut, port closed), then up", "")
	b.submit(2, cl) // the API accepts jobs again
	b.verify(cl, 90*time.Second)
	h = chaosDo(t, "GET", base+"/health/services", "")
	require.Equal(t, http.StatusOK, h.status, "%v", h.body)
}

// chaosKillReplicas runs two API replicas and three workers and kills -9 one of each mid-batch.
func chaosKillReplicas(t *testing.T, row *chaosRow) {
	svc := newCountingService(t, 250*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "3s"), "CAO_STEP_LEASE_TTL=2s")
	api1 := c.startAPI()
	api2 := c.startAPI()
	cl1, cl2 := c.client(api1), c.client(api2)
	for range 3 {
		c.startWorker("CAO_WORKER_CONCURRENCY=4")
	}
	b := newChaosBatch(t, c, svc, row, "fanout", 4, true)

	b.submit(20, cl1, cl2)
	testinfra.Eventually(t, 30*time.Second, func() bool { return svc.Answered() >= 6 }, "%s", "6 answered calls")
	held := svc.trap(csHoldBeforeEffect, func(*csCall) bool { return true })
	call := held.wait(t, 30*time.Second)
	// api1 started first: it is likely the maintenance leader, whose lease must pass to api2.
	api1.signal(t, syscall.SIGKILL)
	b.addFault("kill -9 API replica 1", "")
	b.killOwner(cl2, call, "kill -9 a worker during a call")
	held.Release()
	b.submit(4, cl2)
	b.verify(cl2, 90*time.Second)
}

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/stretchr/testify/require"

	caoclient "github.com/cao-run/cao/pkg/client"
)

// Recovery through the API and the worker's lifecycle, against the counting service of
// faults_test.go: resume, cancel of an in-flight call, graceful shutdown, and how fast a step of a
// dead worker is re-run with the default step lease.

// keyCalls returns the calls that carried key.
func keyCalls(svc *countingService, key string) []csCall {
	var out []csCall
	for _, c := range svc.Calls() {
		if c.Key == key {
			out = append(out, c)
		}
	}
	return out
}

// attemptHistory returns a step's attempt history, oldest first.
func attemptHistory(s map[string]any) []map[string]any {
	var out []map[string]any
	for _, h := range s["attempt_history"].([]any) {
		out = append(out, h.(map[string]any))
	}
	return out
}

func TestResumeViaAPI(t *testing.T) {
	t.Parallel()
	svc := newCountingService(t, 20*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "5s"))
	api := c.startAPI()
	c.startWorker()
	cl := c.client(api)
	key := func(id, step string, run int) string { return fmt.Sprintf("%s/%s/%d", id, step, run) }

	// b fails permanently (400): the job FAILS and c is SKIPPED.
	svc.setFail("b", http.StatusBadRequest, -1)
	id := cl.createJob("chain", map[string]any{})
	j := cl.waitJob(id, 60*time.Second, "FAILED", "COMPLETED")
	require.Equal(t, "FAILED", j["status"])
	st := steps(j)
	require.Equal(t, "SUCCEEDED", st["a"]["status"])
	require.Equal(t, "FAILED", st["b"]["status"])
	require.Equal(t, "SKIPPED", st["c"]["status"])
	require.Len(t, keyCalls(svc, key(id, "b", 1)), 1, "a 400 is not retried")
	aFinished := parseTime(t, st["a"]["finished_at"])

	// Fix the service and resume: only the failed and skipped steps run again, in a new run.
	svc.setFail("b", 0, 0)
	acc, err := cl.sdk().Resume(context.Background(), id, caoclient.ResumeRequest{})
	require.NoError(t, err)
	require.Equal(t, id, acc.JobID)
	j = cl.waitJob(id, 60*time.Second, "COMPLETED", "FAILED")
	require.Equal(t, "COMPLETED", j["status"], "%v", j)
	st = steps(j)
	require.EqualValues(t, 1, st["a"]["run"])
	require.EqualValues(t, 2, st["b"]["run"])
	require.EqualValues(t, 2, st["c"]["run"])
	aCalls := keyCalls(svc, key(id, "a", 1))
	require.Len(t, aCalls, 1, "the SUCCEEDED step is not called again")
	require.False(t, aCalls[0].Arrived.After(aFinished))
	require.Len(t, keyCalls(svc, key(id, "b", 2)), 1, "the resumed run carries a new Idempotency-Key")
	require.Len(t, keyCalls(svc, key(id, "c", 2)), 1)
	require.Empty(t, keyCalls(svc, key(id, "c", 1)), "a skipped step was never called")
	require.Empty(t, keyCalls(svc, key(id, "a", 2)))

	// A COMPLETED job cannot be resumed, with or without from_step.
	for _, req := range []map[string]any{{}, {"from_step": "b"}} {
		code, body := cl.do("POST", "/api/v1/jobs/"+id+"/resume", req)
		require.Equal(t, http.StatusConflict, code, "%v", body)
		require.Equal(t, "job_not_resumable", body["error"].(map[string]any)["code"])
	}

	// from_step re-runs that step and its downstream in new runs, even though it had SUCCEEDED.
	svc.setFail("c", http.StatusBadRequest, -1)
	id2 := cl.createJob("chain", map[string]any{})
	j = cl.waitJob(id2, 60*time.Second, "FAILED", "COMPLETED")
	require.Equal(t, "FAILED", j["status"])
	st = steps(j)
	require.Equal(t, "SUCCEEDED", st["b"]["status"])
	require.Equal(t, "FAILED", st["c"]["status"])
	svc.setFail("c", 0, 0)
	_, err = cl.sdk().Resume(context.Background(), id2, caoclient.ResumeRequest{FromStep: "b"})
	require.NoError(t, err)
	j = cl.waitJob(id2, 60*time.Second, "COMPLETED", "FAILED")
	require.Equal(t, "COMPLETED", j["status"], "%v", j)
	st = steps(j)
	require.EqualValues(t, 1, st["a"]["run"])
	require.EqualValues(t, 2, st["b"]["run"])
	require.EqualValues(t, 2, st["c"]["run"])
	require.Len(t, keyCalls(svc, key(id2, "a", 1)), 1, "upstream of from_step is not called again")
	require.Len(t, keyCalls(svc, key(id2, "b", 1)), 1)
	require.Len(t, keyCalls(svc, key(id2, "b", 2)), 1, "from_step runs again with a new Idempotency-Key")
	require.Len(t, keyCalls(svc, key(id2, "c", 2)), 1)
	require.Equal(t, key(id2, "b", 2), st["b"]["output"].(map[string]any)["key"])
}

func TestCancelInFlightCall(t *testing.T) {
	t.Parallel()
	svc := newCountingService(t, 20*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "5s"))
	api := c.startAPI()
	c.startWorker()
	cl := c.client(api)

	// "parked": a runs, b waits on a queue no worker serves, c needs both.
	held := svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "a" })
	id := cl.createJob("parked", map[string]any{})
	call := held.wait(t, 30*time.Second)
	st := steps(cl.job(id))
	require.Equal(t, "RUNNING", st["a"]["status"])
	require.Equal(t, "QUEUED", st["b"]["status"])
	require.Equal(t, "PENDING", st["c"]["status"])

	cancelAt := time.Now()
	_, err := cl.sdk().Cancel(context.Background(), id)
	require.NoError(t, err)
	gone := svc.waitCall(t, 10*time.Second, "the in-flight call's context to be cancelled", func(c csCall) bool {
		return c.Seq == call.Seq && c.Cancelled
	})
	t.Logf("in-flight call cancelled %s after the cancel request", gone.Ended.Sub(cancelAt).Round(time.Millisecond))

	j := cl.waitJob(id, 10*time.Second, "CANCELLED")
	for name, s := range steps(j) {
		require.Equal(t, "CANCELLED", s["status"], name)
	}
	testinfra.Eventually(t, 10*time.Second, func() bool {
		h := attemptHistory(steps(cl.job(id))["a"])
		return len(h) == 1 && h[0]["status"] == "cancelled"
	}, "%s", "the cancelled attempt in the history")
	require.Len(t, svc.Calls(), 1, "nothing else was called")
	code, _ := cl.do("POST", "/api/v1/jobs/"+id+"/cancel", nil)
	require.Equal(t, http.StatusConflict, code)
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	svc := newCountingService(t, 20*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "5s"))
	api := c.startAPI()
	cl := c.client(api)
	id := ""

	// Long grace: the call in flight finishes and is recorded before the worker exits.
	long := c.startWorker("CAO_SHUTDOWN_GRACE=30s")
	held := svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "a" })
	id = cl.createJob("chain", map[string]any{})
	call := held.wait(t, 30*time.Second)
	long.signal(t, syscall.SIGTERM)
	c.waitLog(long, "worker shutting down", 10*time.Second)
	held.Release()
	require.NoError(t, long.wait(t, 30*time.Second), "clean exit")
	a := steps(cl.job(id))["a"]
	require.Equal(t, "SUCCEEDED", a["status"])
	require.EqualValues(t, 1, a["attempts"])
	h := attemptHistory(a)
	require.Len(t, h, 1)
	require.Equal(t, "succeeded", h[0]["status"])
	require.True(t, workerIDMatches(fmt.Sprintf("worker-*-%d", long.cmd.Process.Pid), h[0]["worker_id"].(string)))
	require.Len(t, keyCalls(svc, call.Key), 1)

	// Short grace: the call is interrupted and the step goes back to its queue without using an
	// attempt. Proof: b then fails twice more with a retryable 503 and still gets a fourth attempt,
	// although max_attempts is 3.
	// The trap is set before the worker starts: b waits in its queue, and a worker takes it at once.
	held = svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "b" })
	short := c.startWorker("CAO_SHUTDOWN_GRACE=500ms")
	call = held.wait(t, 30*time.Second)
	svc.setFail("b", http.StatusServiceUnavailable, 2)
	short.signal(t, syscall.SIGTERM)
	svc.waitCall(t, 10*time.Second, "the held call to be interrupted", func(c csCall) bool {
		return c.Seq == call.Seq && c.Cancelled
	})
	require.NoError(t, short.wait(t, 30*time.Second), "clean exit")
	b := steps(cl.job(id))["b"]
	require.Contains(t, []any{"QUEUED", "RETRYING"}, b["status"], "%v", b)
	require.Equal(t, "interrupted", attemptHistory(b)[0]["status"])

	next := c.startWorker()
	j := cl.waitJob(id, 60*time.Second, "COMPLETED", "FAILED")
	require.Equal(t, "COMPLETED", j["status"], "%v", j)
	b = steps(j)["b"]
	h = attemptHistory(b)
	statuses := []string{}
	for _, x := range h {
		statuses = append(statuses, x["status"].(string))
	}
	require.Equal(t, []string{"interrupted", "failed", "failed", "succeeded"}, statuses)
	require.True(t, workerIDMatches(fmt.Sprintf("worker-*-%d", short.cmd.Process.Pid), h[0]["worker_id"].(string)))
	require.True(t, workerIDMatches(fmt.Sprintf("worker-*-%d", next.cmd.Process.Pid), h[3]["worker_id"].(string)),
		"another worker completed it")
	for _, x := range keyCalls(svc, call.Key) {
		require.Equal(t, call.Key, x.Key)
	}
	require.Len(t, keyCalls(svc, call.Key), 4, "every attempt of the run carried the same key")
}

func TestStuckStepRerunWithDefaultLease(t *testing.T) {
	t.Parallel()
	svc := newCountingService(t, 20*time.Millisecond)
	c := newCluster(t, chaosRegistry(svc.URL(), 4, "30s")) // default CAO_STEP_LEASE_TTL (10s)
	api := c.startAPI()
	cl := c.client(api)
	c.startWorker()
	c.startWorker()

	held := svc.trap(csHoldBeforeEffect, func(c *csCall) bool { return c.Step == "a" })
	id := cl.createJob("chain", map[string]any{})
	call := held.wait(t, 30*time.Second)
	owner := c.workerByID(attemptWorkerID(t, cl, call.Job, call.Step, call.Run, call.Attempt))
	require.NotNil(t, owner)
	owner.signal(t, syscall.SIGKILL)
	killedAt := time.Now()
	next := svc.waitCall(t, 20*time.Second, "the step to be re-run", func(c csCall) bool {
		return c.Key == call.Key && c.Attempt > call.Attempt
	})
	d := next.Arrived.Sub(killedAt)
	t.Logf("stuck step re-run %s after kill -9 (default 10s step lease)", d.Round(time.Millisecond))
	fmt.Printf("=== stuck step re-run %s after kill -9 (default 10s step lease)\n", d.Round(time.Millisecond))
	require.Less(t, d, 15*time.Second)
	j := cl.waitJob(id, 60*time.Second, "COMPLETED", "FAILED")
	require.Equal(t, "COMPLETED", j["status"])
	h := attemptHistory(steps(j)["a"])
	require.Equal(t, "lost", h[0]["status"])
	require.Equal(t, "succeeded", h[1]["status"])
}

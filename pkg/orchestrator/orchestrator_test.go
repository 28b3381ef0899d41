package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

const testRegistry = `
services:
  sim:
    kind: mock
    retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}
features:
  diamond:
    input:
      type: object
      required: [name]
      properties: {name: {type: string, minLength: 1}}
    steps:
      - {name: a, service: sim}
      - {name: b, service: sim, needs: [a], queue: heavy}
      - {name: c, service: sim, needs: [a]}
      - {name: d, service: sim, needs: [b, c]}
`

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type bundle struct {
	orch  *orchestrator.Orchestrator
	store store.Store
	clock *clock
}

func setup(t *testing.T, backend string) *bundle {
	t.Helper()
	reg, err := registry.Parse("test.yaml", []byte(testRegistry), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	var st store.Store
	if backend == "sqlite" {
		st = teststore.SQLite(t)
	} else {
		st, _ = teststore.Postgres(t)
	}
	clk := &clock{t: time.Now().UTC()}
	o := orchestrator.New(st, reg, nil, nil, orchestrator.Config{
		Now: clk.Now, StepLeaseTTL: 10 * time.Second, StuckJobAfter: time.Minute, FailStuckAfter: 2 * time.Minute,
		Rand: func() float64 { return 0.5 },
	})
	return &bundle{orch: o, store: st, clock: clk}
}

var backends = []string{"postgres", "sqlite"}

// onEachBackend runs body, in parallel, on a fresh Postgres-backed and a fresh SQLite-backed bundle.
func onEachBackend(t *testing.T, body func(t *testing.T, b *bundle)) {
	t.Helper()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			body(t, setup(t, backend))
		})
	}
}

// drain claims every outbox task (as the relay would) and returns their payloads.
func (b *bundle) drain(t *testing.T) []task.StepPayload {
	t.Helper()
	ctx := context.Background()
	var out []task.StepPayload
	require.NoError(t, b.store.Tx(ctx, func(tx store.Tx) error {
		tasks, err := tx.ClaimOutbox(ctx, time.Now().Add(time.Hour), 1000)
		if err != nil {
			return err
		}
		ids := make([]int64, len(tasks))
		for i, ot := range tasks {
			p, err := task.ParseStepPayload(ot.Payload)
			if err != nil {
				return err
			}
			require.Equal(t, p.TaskID(), ot.TaskID)
			out = append(out, p)
			ids[i] = ot.ID
		}
		return tx.DeleteOutbox(ctx, ids)
	}))
	return out
}

func (b *bundle) start(t *testing.T, p task.StepPayload, worker string) *orchestrator.Attempt {
	t.Helper()
	ctx := context.Background()
	tg, err := b.orch.Prepare(ctx, p)
	require.NoError(t, err)
	a, err := b.orch.StartAttempt(ctx, tg, worker)
	require.NoError(t, err)
	return a
}

func (b *bundle) create(t *testing.T) *orchestrator.JobView {
	t.Helper()
	v, created, err := b.orch.CreateJob(context.Background(), orchestrator.CreateRequest{Feature: "diamond", Input: json.RawMessage(`{"name":"x"}`)})
	require.NoError(t, err)
	require.True(t, created)
	return v
}

func stepStatus(t *testing.T, b *bundle, jobID string) map[string]store.StepStatus {
	t.Helper()
	v, err := b.orch.GetJob(context.Background(), store.AllTenants, jobID)
	require.NoError(t, err)
	m := map[string]store.StepStatus{}
	for _, s := range v.Steps {
		m[s.Name] = s.Status
	}
	m["$job"] = store.StepStatus(v.Job.Status)
	return m
}

func TestRunDAGInNeedsOrder(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		v := b.create(t)
		require.Equal(t, store.JobPending, v.Job.Status)
		st := stepStatus(t, b, v.Job.ID)
		require.Equal(t, store.StepQueued, st["a"])
		require.Equal(t, store.StepPending, st["b"])

		var order []string
		for round := 0; round < 10; round++ {
			tasks := b.drain(t)
			if len(tasks) == 0 {
				break
			}
			var started []*orchestrator.Attempt
			for _, p := range tasks {
				started = append(started, b.start(t, p, "w1"))
			}
			for _, a := range started {
				order = append(order, a.Payload.Step)
				// The template data has the outputs of every need.
				for _, need := range a.Step.Needs {
					require.Contains(t, a.Outputs, need)
				}
				out := json.RawMessage(fmt.Sprintf(`{"step":%q}`, a.Payload.Step))
				require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: out}))
			}
		}
		require.Equal(t, "a", order[0])
		require.ElementsMatch(t, []string{"b", "c"}, order[1:3])
		require.Equal(t, "d", order[3])

		v, err := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
		require.NoError(t, err)
		require.Equal(t, store.JobCompleted, v.Job.Status)
		require.NotNil(t, v.Job.StartedAt)
		require.NotNil(t, v.Job.FinishedAt)
		var output map[string]map[string]string
		require.NoError(t, json.Unmarshal(v.Job.Output, &output))
		require.Equal(t, "d", output["d"]["step"])

		// Events: contiguous seqs from 1, ending with the terminal job event.
		evs, err := b.orch.Events(ctx, store.AllTenants, v.Job.ID, 0, 0)
		require.NoError(t, err)
		for i, e := range evs {
			require.Equal(t, int64(i+1), e.Seq)
		}
		last := evs[len(evs)-1]
		require.Equal(t, store.EventJob, last.Type)
		require.Equal(t, string(store.JobCompleted), last.Status)
		require.Equal(t, v.Job.LastSeq, last.Seq)
	})
}

func TestDuplicateDeliveryRunsOnce(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		v := b.create(t)
		p := b.drain(t)[0]

		// Many concurrent deliveries of the same task: exactly one starts the attempt.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var winners []*orchestrator.Attempt
		stale := 0
		for i := range 8 {
			wg.Go(func() {
				tg, err := b.orch.Prepare(ctx, p)
				if errors.Is(err, orchestrator.ErrStale) {
					mu.Lock()
					stale++
					mu.Unlock()
					return
				}
				require.NoError(t, err)
				a, err := b.orch.StartAttempt(ctx, tg, fmt.Sprintf("w%d", i))
				mu.Lock()
				defer mu.Unlock()
				if errors.Is(err, orchestrator.ErrStale) {
					stale++
					return
				}
				require.NoError(t, err)
				winners = append(winners, a)
			})
		}
		wg.Wait()
		require.Len(t, winners, 1)
		require.Equal(t, 7, stale)
		require.NoError(t, b.orch.FinishAttempt(ctx, winners[0], orchestrator.Outcome{Output: json.RawMessage(`1`)}))

		// A redelivery after success is stale; the same attempt reporting again (a retry after a
		// lost commit answer) changes nothing.
		_, err := b.orch.Prepare(ctx, p)
		require.ErrorIs(t, err, orchestrator.ErrStale)
		require.NoError(t, b.orch.FinishAttempt(ctx, winners[0], orchestrator.Outcome{Output: json.RawMessage(`2`)}))
		got, err := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
		require.NoError(t, err)
		require.JSONEq(t, `1`, string(got.Steps[0].Output))
		require.Equal(t, 1, got.Steps[0].Attempts)
	})
}

func TestRetryThenFailSkipsDownstream(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	a := b.start(t, b.drain(t)[0], "w1")
	boom := errors.New("upstream 503")
	require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Err: boom, Retryable: true, ErrorClass: "http_status", HTTPStatus: 503}))
	require.Equal(t, store.StepRetrying, stepStatus(t, b, v.Job.ID)["a"])

	// The retry is scheduled through the queue with a delay, never by sleeping.
	tasks := b.drain(t)
	require.Len(t, tasks, 1)
	require.Equal(t, 2, tasks[0].Attempt)
	got, _ := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.NotNil(t, got.Steps[0].NextAttemptAt)

	// Retry-After beyond the backoff wins.
	a2 := b.start(t, tasks[0], "w1")
	require.NoError(t, b.orch.FinishAttempt(ctx, a2, orchestrator.Outcome{Err: boom, Retryable: true}))
	st := stepStatus(t, b, v.Job.ID)
	require.Equal(t, store.StepFailed, st["a"])
	require.Equal(t, store.StepSkipped, st["b"])
	require.Equal(t, store.StepSkipped, st["d"])
	require.Equal(t, store.StepStatus(store.JobFailed), st["$job"])
	got, _ = b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.Contains(t, got.Job.Error, "step a failed")
	require.Len(t, got.Attempts, 2)
	require.Equal(t, 503, got.Attempts[0].HTTPStatus)
	require.Equal(t, store.AttemptFailed, got.Attempts[1].Status)
}

func TestRetryAfterSetsDelay(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	a := b.start(t, b.drain(t)[0], "w1")
	require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Err: errors.New("429"), Retryable: true, RetryAfter: 7 * time.Second}))
	got, _ := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.WithinDuration(t, b.clock.Now().Add(7*time.Second), *got.Steps[0].NextAttemptAt, time.Millisecond)
}

func TestNonRetryableFailsAtOnceAndWaitsForRunning(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	a := b.start(t, b.drain(t)[0], "w1")
	require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{}`)}))
	tasks := b.drain(t)
	require.Len(t, tasks, 2)
	ab := b.start(t, tasks[0], "w1")
	ac := b.start(t, tasks[1], "w2")
	require.NoError(t, b.orch.FinishAttempt(ctx, ab, orchestrator.Outcome{Err: errors.New("400 bad request"), Retryable: false}))
	st := stepStatus(t, b, v.Job.ID)
	require.Equal(t, store.StepFailed, st[ab.Payload.Step])
	require.Equal(t, store.StepRunning, st[ac.Payload.Step], "a step already running finishes")
	require.Equal(t, store.StepSkipped, st["d"])
	require.Equal(t, store.StepStatus(store.JobRunning), st["$job"])
	require.NoError(t, b.orch.FinishAttempt(ctx, ac, orchestrator.Outcome{Output: json.RawMessage(`{}`)}))
	st = stepStatus(t, b, v.Job.ID)
	require.Equal(t, store.StepSucceeded, st[ac.Payload.Step], "and is recorded")
	require.Equal(t, store.StepStatus(store.JobFailed), st["$job"])
	require.Empty(t, b.drain(t))
}

func TestCancelFencesRunningAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	a := b.start(t, b.drain(t)[0], "w1")
	_, err := b.orch.Cancel(ctx, store.AllTenants, v.Job.ID)
	require.NoError(t, err)
	st := stepStatus(t, b, v.Job.ID)
	for _, name := range []string{"a", "b", "c", "d"} {
		require.Equal(t, store.StepCancelled, st[name])
	}
	require.Equal(t, store.StepStatus(store.JobCancelled), st["$job"])
	require.ErrorIs(t, b.orch.Heartbeat(ctx, a), orchestrator.ErrFenced)
	require.ErrorIs(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`1`)}), orchestrator.ErrFenced)
	_, err = b.orch.Cancel(ctx, store.AllTenants, v.Job.ID)
	require.ErrorIs(t, err, orchestrator.ErrAlreadyTerminal)
	got, _ := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.Equal(t, store.AttemptCancelled, got.Attempts[0].Status)
}

func TestResume(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		v := b.create(t)
		id := v.Job.ID
		a := b.start(t, b.drain(t)[0], "w1")
		require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`"A1"`)}))
		var started []*orchestrator.Attempt
		for _, p := range b.drain(t) {
			started = append(started, b.start(t, p, "w1"))
		}
		for _, at := range started {
			p := at.Payload
			out := orchestrator.Outcome{Output: json.RawMessage(`"ok"`)}
			if p.Step == "b" {
				out = orchestrator.Outcome{Err: errors.New("nope"), Retryable: false}
			}
			require.NoError(t, b.orch.FinishAttempt(ctx, at, out))
		}
		require.Equal(t, store.StepStatus(store.JobFailed), stepStatus(t, b, id)["$job"])

		// Resume re-runs b (failed) and d (skipped) in run 2; a and c are kept.
		resumed, err := b.orch.Resume(ctx, store.AllTenants, id, orchestrator.ResumeRequest{Input: json.RawMessage(`{"name":"y"}`)})
		require.NoError(t, err)
		// The answer is the job as the resume left it (the contract's PENDING), not a read made after
		// the dispatch, which a worker answering the bell may already have changed.
		require.Equal(t, store.JobPending, resumed.Job.Status)
		for _, s := range resumed.Steps {
			if s.Name == "b" {
				require.Equal(t, store.StepQueued, s.Status)
				require.Equal(t, 2, s.Run)
			}
		}
		got, _ := b.orch.GetJob(ctx, store.AllTenants, id)
		runs := map[string]int{}
		for _, s := range got.Steps {
			runs[s.Name] = s.Run
		}
		require.Equal(t, map[string]int{"a": 1, "b": 2, "c": 1, "d": 2}, runs)
		require.JSONEq(t, `{"name":"y"}`, string(got.Job.Input))
		inputs, err := b.store.GetJobInputs(ctx, id)
		require.NoError(t, err)
		require.Len(t, inputs, 2)
		require.JSONEq(t, `{"name":"x"}`, string(inputs[0].Input))

		tasks := b.drain(t)
		require.Len(t, tasks, 1)
		require.Equal(t, "b", tasks[0].Step)
		require.Equal(t, 2, tasks[0].Run)
		require.Equal(t, "step:"+id+":2:1:b", tasks[0].TaskID())
		for len(tasks) > 0 {
			for _, p := range tasks {
				at := b.start(t, p, "w1")
				require.NoError(t, b.orch.FinishAttempt(ctx, at, orchestrator.Outcome{Output: json.RawMessage(`"ok"`)}))
			}
			tasks = b.drain(t)
		}
		got, _ = b.orch.GetJob(ctx, store.AllTenants, id)
		require.Equal(t, store.JobCompleted, got.Job.Status)
		require.JSONEq(t, `"A1"`, string(got.Steps[0].Output), "a SUCCEEDED step is never executed again")

		// Completed: not resumable. from_step on a failed job re-runs downstream too.
		_, err = b.orch.Resume(ctx, store.AllTenants, id, orchestrator.ResumeRequest{})
		require.ErrorIs(t, err, orchestrator.ErrNotResumable)
	})
}

func TestResumeFromStepAndValidation(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	id := v.Job.ID
	_, err := b.orch.Resume(ctx, store.AllTenants, id, orchestrator.ResumeRequest{})
	require.ErrorIs(t, err, orchestrator.ErrNotResumable, "running and not stuck")
	a := b.start(t, b.drain(t)[0], "w1")
	require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Err: errors.New("bad"), Retryable: false}))

	_, err = b.orch.Resume(ctx, store.AllTenants, id, orchestrator.ResumeRequest{FromStep: "nope"})
	require.ErrorIs(t, err, orchestrator.ErrStepNotFound)
	var inErr *orchestrator.InputError
	_, err = b.orch.Resume(ctx, store.AllTenants, id, orchestrator.ResumeRequest{Input: json.RawMessage(`{"name":""}`)})
	require.ErrorAs(t, err, &inErr)
	_, err = b.orch.Resume(ctx, store.AllTenants, "6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11", orchestrator.ResumeRequest{})
	require.ErrorIs(t, err, orchestrator.ErrJobNotFound)

	_, err = b.orch.Resume(ctx, store.AllTenants, id, orchestrator.ResumeRequest{FromStep: "a"})
	require.NoError(t, err)
	got, _ := b.orch.GetJob(ctx, store.AllTenants, id)
	for _, s := range got.Steps {
		require.Equal(t, 2, s.Run, s.Name)
	}
}

func TestReaperRequeuesLostStepInSameRun(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		v := b.create(t)
		a := b.start(t, b.drain(t)[0], "dead-worker")

		n, err := b.orch.ReapExpiredSteps(ctx, 10)
		require.NoError(t, err)
		require.Zero(t, n, "lease still live")
		require.NoError(t, b.orch.Heartbeat(ctx, a))

		b.clock.Add(11 * time.Second)
		n, err = b.orch.ReapExpiredSteps(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		got, _ := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
		require.Equal(t, store.StepQueued, got.Steps[0].Status)
		require.Equal(t, 1, got.Steps[0].Run, "same run: same Idempotency-Key")
		require.Equal(t, 1, got.Steps[0].Lost)
		require.Equal(t, store.AttemptLost, got.Attempts[0].Status)

		tasks := b.drain(t)
		require.Len(t, tasks, 1)
		require.Equal(t, 2, tasks[0].Attempt)
		// The stopped worker wakes up: its heartbeat and its result are fenced.
		require.ErrorIs(t, b.orch.Heartbeat(ctx, a), orchestrator.ErrFenced)
		require.ErrorIs(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`"late"`)}), orchestrator.ErrFenced)
		a2 := b.start(t, tasks[0], "w2")
		require.NoError(t, b.orch.FinishAttempt(ctx, a2, orchestrator.Outcome{Output: json.RawMessage(`"ok"`)}))
		got, _ = b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
		require.JSONEq(t, `"ok"`, string(got.Steps[0].Output))
	})
}

func TestInterruptedAttemptDoesNotBurnRetry(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	for i := range 4 { // more interruptions than max_attempts (2)
		a := b.start(t, b.drain(t)[0], "w1")
		require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Err: context.Canceled, Interrupted: true}), i)
	}
	a := b.start(t, b.drain(t)[0], "w1")
	require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Err: errors.New("503"), Retryable: true}))
	require.Equal(t, store.StepRetrying, stepStatus(t, b, v.Job.ID)["a"], "one real failure of two allowed")
}

func TestStuckJobDetectedRecoveredThenFailed(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	b.drain(t) // the task is "lost": never delivered

	b.clock.Add(2 * time.Minute)
	n, err := b.orch.DetectStuckJobs(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, _ := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.NotNil(t, got.Job.StuckAt)
	require.Contains(t, got.Job.StuckReason, "stuck")
	tasks := b.drain(t)
	require.Len(t, tasks, 1, "waiting step re-dispatched")
	evs, _ := b.orch.Events(ctx, store.AllTenants, v.Job.ID, 0, 0)
	require.Contains(t, evs[len(evs)-1].Reason, "stuck")

	// A stuck job can be resumed even though it is not terminal.
	b.clock.Add(3 * time.Minute)
	n, err = b.orch.DetectStuckJobs(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, _ = b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.Equal(t, store.JobFailed, got.Job.Status)
	require.Contains(t, got.Job.Error, "stuck")
}

func TestCreateJobValidation(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	_, _, err := b.orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "nope"})
	require.ErrorIs(t, err, orchestrator.ErrFeatureNotFound)
	var inErr *orchestrator.InputError
	for _, in := range []string{`{}`, `{"name": 3}`, `[1]`, `"x"`} {
		_, _, err = b.orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "diamond", Input: json.RawMessage(in)})
		require.ErrorAs(t, err, &inErr, in)
		require.NotEmpty(t, inErr.Fields)
	}
}

// TestJobIDsFollowCreation checks that job ids are version 7 UUIDs, later jobs' sorting after
// earlier ones': every index keyed by a job id is written at its end, not at random places.
func TestJobIDsFollowCreation(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	var prev string
	for range 5 {
		v, _, err := b.orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "diamond", Input: json.RawMessage(`{"name":"v7"}`)})
		require.NoError(t, err)
		id, err := uuid.Parse(v.Job.ID)
		require.NoError(t, err)
		require.Equal(t, uuid.Version(7), id.Version(), v.Job.ID)
		require.Greater(t, v.Job.ID, prev, "a later job's id sorts after")
		prev = v.Job.ID
	}
}

func TestIdempotencyKeyConcurrentCreatesOneJob(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		req := orchestrator.CreateRequest{Feature: "diamond", Input: json.RawMessage(`{"name":"k"}`), IdempotencyKey: "key-1"}
		var wg sync.WaitGroup
		var mu sync.Mutex
		ids := map[string]int{}
		inFlight := 0
		for range 20 {
			wg.Go(func() {
				v, _, err := b.orch.CreateJob(ctx, req)
				mu.Lock()
				defer mu.Unlock()
				if errors.Is(err, orchestrator.ErrIdempotencyInFlight) {
					inFlight++
					return
				}
				require.NoError(t, err)
				ids[v.Job.ID]++
			})
		}
		wg.Wait()
		require.Len(t, ids, 1, "exactly one job")
		jobs, err := b.store.ListJobs(ctx, store.JobFilter{Scope: store.AllTenants, Limit: 100})
		require.NoError(t, err)
		require.Len(t, jobs, 1)

		// Same key and body later: the same job; another body: mismatch.
		v, created, err := b.orch.CreateJob(ctx, req)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, jobs[0].ID, v.Job.ID)
		req.Input = json.RawMessage(`{"name":"other"}`)
		_, _, err = b.orch.CreateJob(ctx, req)
		require.ErrorIs(t, err, orchestrator.ErrIdempotencyMismatch)
		// Equivalent JSON with different spacing is the same request.
		req.Input = json.RawMessage(`{ "name" : "k" }`)
		v2, created, err := b.orch.CreateJob(ctx, req)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, v.Job.ID, v2.Job.ID)
	})
}

func TestFinishAttemptRetriedAfterLostCommitAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, "postgres")
	ctx := context.Background()
	v := b.create(t)
	a := b.start(t, b.drain(t)[0], "w1")
	out := orchestrator.Outcome{Output: json.RawMessage(`{"won":1}`)}
	require.NoError(t, b.orch.FinishAttempt(ctx, a, out))
	// The worker did not hear the commit's answer and records the same outcome again: a no-op that
	// keeps the succeeded record (it must not turn into "lost").
	require.NoError(t, b.orch.FinishAttempt(ctx, a, out))
	got, _ := b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	require.Equal(t, store.StepSucceeded, got.Steps[0].Status)
	require.Len(t, got.Attempts, 1)
	require.Equal(t, store.AttemptSucceeded, got.Attempts[0].Status)

	// A reclaimed attempt's late result is fenced and its "lost" record is kept.
	p := b.drain(t)[0]
	a2 := b.start(t, p, "w2")
	b.clock.Add(11 * time.Second)
	n, err := b.orch.ReapExpiredSteps(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.ErrorIs(t, b.orch.FinishAttempt(ctx, a2, orchestrator.Outcome{Output: json.RawMessage(`1`)}), orchestrator.ErrFenced)
	got, _ = b.orch.GetJob(ctx, store.AllTenants, v.Job.ID)
	for _, at := range got.Attempts {
		if at.Step == p.Step {
			require.Equal(t, store.AttemptLost, at.Status)
			require.Contains(t, at.Error, "stopped renewing", "the reaper's record is kept")
		}
	}
}

func TestFinishAndContinueClaimsAReadyStep(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := context.Background()
		v := b.create(t)
		a := b.start(t, b.drain(t)[0], "w1")
		require.Equal(t, "a", a.Payload.Step)

		// a makes b and c ready; the worker continues with the first it accepts (c: b is refused).
		var asked []string
		next, _, err := b.orch.FinishAndContinue(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"a": 1}`)},
			func(st *registry.Step, svc *registry.Service) bool {
				asked = append(asked, st.Name)
				require.Equal(t, "sim", svc.Name)
				return st.Name == "c"
			})
		require.NoError(t, err)
		require.NotNil(t, next)
		require.Equal(t, []string{"b", "c"}, asked)
		require.Equal(t, "c", next.Payload.Step)
		require.Equal(t, 1, next.Payload.Attempt)
		require.JSONEq(t, `{"a": 1}`, string(next.Outputs["a"]), "the continued step has its upstream outputs")
		st := stepStatus(t, b, v.Job.ID)
		require.Equal(t, store.StepRunning, st["c"])
		require.Equal(t, store.StepQueued, st["b"])
		tasks := b.drain(t)
		require.Len(t, tasks, 1, "only the step not continued is queued")
		require.Equal(t, "b", tasks[0].Step)

		// The continued attempt is a normal attempt: it heart-beats, records, and a duplicate of its
		// task (there is none, but a resume or reconciler could make one) would be stale.
		require.NoError(t, b.orch.Heartbeat(ctx, next))
		_, err = b.orch.Prepare(ctx, task.StepPayload{JobID: v.Job.ID, Step: "c", Run: 1, Attempt: 1})
		require.ErrorIs(t, err, orchestrator.ErrStale)
		last, _, err := b.orch.FinishAndContinue(ctx, next, orchestrator.Outcome{Output: json.RawMessage(`2`)},
			func(*registry.Step, *registry.Service) bool { return true })
		require.NoError(t, err)
		require.Nil(t, last, "d still needs b")

		ab := b.start(t, tasks[0], "w2")
		last, _, err = b.orch.FinishAndContinue(ctx, ab, orchestrator.Outcome{Output: json.RawMessage(`3`)},
			func(*registry.Step, *registry.Service) bool { return true })
		require.NoError(t, err)
		require.NotNil(t, last)
		require.Equal(t, "d", last.Payload.Step)
		require.Equal(t, "w2", last.WorkerID)
		require.Empty(t, b.drain(t))
		require.NoError(t, b.orch.FinishAttempt(ctx, last, orchestrator.Outcome{Output: json.RawMessage(`4`)}))
		require.Equal(t, store.StepStatus(store.JobCompleted), stepStatus(t, b, v.Job.ID)["$job"])

		// A failed step continues nothing.
		b.create(t)
		a2 := b.start(t, b.drain(t)[0], "w1")
		none, failed, err := b.orch.FinishAndContinue(ctx, a2, orchestrator.Outcome{Err: errors.New("bad"), ErrorClass: "http_status", Retryable: false},
			func(*registry.Step, *registry.Service) bool { return true })
		require.NoError(t, err)
		require.Nil(t, none)
		require.NotNil(t, failed, "a step that fails for good is reported")
		require.Equal(t, orchestrator.Failure{Step: a2.Payload.Step, Class: "http_status", Message: "bad", Reason: "not retryable"}, *failed)
	})
}

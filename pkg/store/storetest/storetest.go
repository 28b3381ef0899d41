// Package storetest is the conformance suite for store.Store: every implementation (sqlstore on
// Postgres and on SQLite) runs the same tests, so the dialects cannot drift apart.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

// Run runs the conformance suite against the implementation that open returns. open is called once
// per subtest (subtests run in parallel) and must return an empty, migrated store, closed at the end
// of that subtest (t.Cleanup).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"JobInsertGetUpdate", testJobInsertGetUpdate},
		{"JobDefaults", testJobDefaults},
		{"StepsOrdered", testStepsOrdered},
		{"UpdateStepCompareAndSet", testUpdateStepCompareAndSet},
		{"LockJobSerializesTransactions", testLockJobSerializes},
		{"LockJobWaitsForHolder", testLockJobWaitsForHolder},
		{"Events", testEvents},
		{"Outbox", testOutbox},
		{"OutboxConcurrentClaimers", testOutboxConcurrentClaimers},
		{"OutboxClaimSkipsClaimedTasks", testOutboxClaimSkipsClaimed},
		{"IdempotencyKeys", testIdempotencyKeys},
		{"IdempotencyKeysExpire", testIdempotencyKeysExpire},
		{"ListJobsPagination", testListJobsPagination},
		{"ListJobsFilters", testListJobsFilters},
		{"ListExpiredSteps", testListExpiredSteps},
		{"ListWaitingSteps", testListWaitingSteps},
		{"ListIdleJobs", testListIdleJobs},
		{"ListStuckJobs", testListStuckJobs},
		{"JobInputs", testJobInputs},
		{"AttemptsOrderedAndUpserted", testAttempts},
		{"NotFound", testNotFound},
		{"TxRollbackOnError", testTxRollbackOnError},
		{"TxRollbackOnPanic", testTxRollbackOnPanic},
		{"TxIsolation", testTxIsolation},
		{"CancelledContext", testCancelledContext},
		{"PingAndDialect", testPingAndDialect},
	}
	tests = append(tests, applyTests...)
	tests = append(tests, tenantTests...)
	tests = append(tests, webhookTests...)
	tests = append(tests, retentionTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, open(t))
		})
	}
}

// base is a fixed instant with no sub-second part; tests add sub-second offsets to it.
var base = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newJob(feature string, status store.JobStatus, created time.Time) *store.Job {
	return &store.Job{
		ID:           uuid.NewString(),
		FeatureName:  feature,
		Status:       status,
		Input:        json.RawMessage(`{"business_name": "Acme"}`),
		InputVersion: 1,
		CreatedAt:    created,
		UpdatedAt:    created,
	}
}

func newStep(jobID, name string, position int, status store.StepStatus, at time.Time) store.Step {
	return store.Step{
		JobID:     jobID,
		Name:      name,
		Position:  position,
		Service:   "sim",
		Queue:     "default",
		Needs:     []string{},
		Status:    status,
		Run:       1,
		CreatedAt: at,
		UpdatedAt: at,
	}
}

// seed inserts jobs and steps in one transaction.
func seed(t *testing.T, s store.Store, jobs []*store.Job, steps ...store.Step) {
	t.Helper()
	ctx := testContext(t)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		for _, j := range jobs {
			if err := tx.InsertJob(ctx, j); err != nil {
				return err
			}
		}
		return tx.InsertSteps(ctx, steps)
	}))
}

func ptr[T any](v T) *T { return &v }

// canonJSON re-encodes JSON so that values compare equal whatever the database did to whitespace
// and key order (jsonb normalizes both).
func canonJSON(t *testing.T, raw json.RawMessage) json.RawMessage {
	t.Helper()
	if raw == nil {
		return nil
	}
	var v any
	require.NoError(t, json.Unmarshal(raw, &v), "stored JSON %q", raw)
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

func canonTime(tm time.Time) time.Time { return tm.UTC().Round(0) }

func canonTimePtr(tm *time.Time) *time.Time {
	if tm == nil {
		return nil
	}
	return ptr(canonTime(*tm))
}

func canonJob(t *testing.T, j store.Job) store.Job {
	j.Input = canonJSON(t, j.Input)
	j.Output = canonJSON(t, j.Output)
	j.CreatedAt = canonTime(j.CreatedAt)
	j.UpdatedAt = canonTime(j.UpdatedAt)
	j.StuckAt = canonTimePtr(j.StuckAt)
	j.StartedAt = canonTimePtr(j.StartedAt)
	j.FinishedAt = canonTimePtr(j.FinishedAt)
	return j
}

func canonStep(t *testing.T, s store.Step) store.Step {
	s.Output = canonJSON(t, s.Output)
	if s.Needs == nil {
		s.Needs = []string{}
	}
	s.CreatedAt = canonTime(s.CreatedAt)
	s.UpdatedAt = canonTime(s.UpdatedAt)
	s.LeaseExpiresAt = canonTimePtr(s.LeaseExpiresAt)
	s.NextAttemptAt = canonTimePtr(s.NextAttemptAt)
	s.StartedAt = canonTimePtr(s.StartedAt)
	s.FinishedAt = canonTimePtr(s.FinishedAt)
	return s
}

func requireJob(t *testing.T, want, got *store.Job) {
	t.Helper()
	require.NotNil(t, got)
	require.Equal(t, canonJob(t, *want), canonJob(t, *got))
}

func requireSteps(t *testing.T, want, got []store.Step) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, canonStep(t, want[i]), canonStep(t, got[i]), "step %d", i)
	}
}

func jobIDs(jobs []store.Job) []string {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	return ids
}

func stepNames(steps []store.Step) []string {
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.Name
	}
	return names
}

func taskIDs(tasks []store.OutboxTask) []int64 {
	ids := make([]int64, len(tasks))
	for i, task := range tasks {
		ids[i] = task.ID
	}
	return ids
}

func testJobInsertGetUpdate(t *testing.T, s store.Store) {
	ctx := testContext(t)
	// Nanoseconds and a non-UTC zone: the store keeps the instant, in UTC, to the microsecond.
	zone := time.FixedZone("UTC+2", 2*3600)
	created := base.Add(123456789 * time.Nanosecond).In(zone)
	id := uuid.NewString()
	j := &store.Job{
		ID:             strings.ToUpper(id),
		FeatureName:    "business_plan",
		Status:         store.JobRunning,
		Input:          json.RawMessage(`{"z": [1, 2, {"b": null}], "a": "x"}`),
		InputVersion:   1,
		Error:          "",
		LastSeq:        3,
		StuckAt:        ptr(created.Add(time.Minute)),
		StuckReason:    "no progress",
		IdempotencyKey: "key-1",
		CreatedAt:      created,
		UpdatedAt:      created.Add(time.Second),
		StartedAt:      ptr(created.Add(500 * time.Millisecond)),
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertJob(ctx, j) }))
	require.Equal(t, id, j.ID, "InsertJob stores the canonical lowercase id")
	require.Equal(t, base.Add(123456*time.Microsecond), j.CreatedAt, "InsertJob normalizes times to UTC microseconds")

	got, err := s.GetJob(ctx, store.AllTenants, id)
	require.NoError(t, err)
	requireJob(t, j, got)
	require.Equal(t, time.UTC, got.CreatedAt.Location())
	got, err = s.GetJob(ctx, store.AllTenants, strings.ToUpper(id))
	require.NoError(t, err, "ids are case-insensitive")
	require.Equal(t, id, got.ID)

	err = s.Tx(ctx, func(tx store.Tx) error { return tx.InsertJob(ctx, newJobWithID(id)) })
	require.ErrorIs(t, err, store.ErrDuplicate)

	// UpdateJob writes every mutable field, including clearing optional ones.
	j.Status = store.JobCompleted
	j.Input = json.RawMessage(`{"business_name": "Acme 2"}`)
	j.InputVersion = 2
	j.Output = json.RawMessage(`{"summary": {"ok": true}}`)
	j.Error = "none"
	j.LastSeq = 9
	j.StuckAt = nil
	j.StuckReason = ""
	j.UpdatedAt = base.Add(time.Hour + 999999*time.Microsecond)
	j.FinishedAt = ptr(base.Add(time.Hour))
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateJob(ctx, j) }))
	got, err = s.GetJob(ctx, store.AllTenants, id)
	require.NoError(t, err)
	requireJob(t, j, got)

	missing := newJob("business_plan", store.JobRunning, base)
	err = s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateJob(ctx, missing) })
	require.ErrorIs(t, err, store.ErrNotFound)
}

func newJobWithID(id string) *store.Job {
	j := newJob("business_plan", store.JobPending, base)
	j.ID = id
	return j
}

func testJobDefaults(t *testing.T, s store.Store) {
	ctx := testContext(t)
	before := time.Now().Add(-time.Second)
	j := &store.Job{ID: uuid.NewString(), FeatureName: "f", Status: store.JobPending, Input: json.RawMessage(`{}`)}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertJob(ctx, j) }))
	require.Equal(t, 1, j.InputVersion)
	require.WithinRange(t, j.CreatedAt, before, time.Now().Add(time.Second))
	require.Equal(t, j.CreatedAt, j.UpdatedAt)
	got, err := s.GetJob(ctx, store.AllTenants, j.ID)
	require.NoError(t, err)
	requireJob(t, j, got)
	require.Nil(t, got.Output)
	require.Nil(t, got.StartedAt)
	require.Nil(t, got.FinishedAt)
	require.Nil(t, got.StuckAt)
	require.Empty(t, got.IdempotencyKey)
}

func testStepsOrdered(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobPending, base)
	steps := []store.Step{
		newStep(j.ID, "summary", 2, store.StepPending, base),
		newStep(j.ID, "market_research", 0, store.StepQueued, base),
		newStep(j.ID, "financials", 1, store.StepPending, base),
	}
	steps[0].Needs = []string{"market_research", "financials"}
	steps[2].Needs = []string{"market_research"}
	steps[1].Output = json.RawMessage(`{"text": "big market"}`)
	steps[1].Queue = "heavy"
	steps[1].Service = "llm"
	steps[1].NextAttemptAt = ptr(base.Add(time.Second))
	seed(t, s, []*store.Job{j}, steps...)

	got, err := s.GetSteps(ctx, j.ID)
	require.NoError(t, err)
	requireSteps(t, []store.Step{steps[1], steps[2], steps[0]}, got)
	require.Nil(t, got[1].Output, "a step without output reads back nil")
	require.Equal(t, []string{}, got[0].Needs)

	err = s.Tx(ctx, func(tx store.Tx) error {
		return tx.InsertSteps(ctx, []store.Step{newStep(j.ID, "financials", 5, store.StepPending, base)})
	})
	require.ErrorIs(t, err, store.ErrDuplicate)

	err = s.Tx(ctx, func(tx store.Tx) error {
		return tx.InsertSteps(ctx, []store.Step{newStep(uuid.NewString(), "orphan", 0, store.StepPending, base)})
	})
	require.Error(t, err, "a step needs its job")

	none, err := s.GetSteps(ctx, uuid.NewString())
	require.NoError(t, err)
	require.Empty(t, none)
}

func testUpdateStepCompareAndSet(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	seed(t, s, []*store.Job{j}, newStep(j.ID, "a", 0, store.StepQueued, base))

	steps, err := s.GetSteps(ctx, j.ID)
	require.NoError(t, err)
	step := steps[0]
	expect := step.Expect()
	step.Status = store.StepRunning
	step.Attempts = 1
	step.LeaseOwner = "worker-1"
	step.LeaseExpiresAt = ptr(base.Add(30*time.Second + 1500*time.Nanosecond))
	step.StartedAt = ptr(base.Add(time.Second))
	step.UpdatedAt = base.Add(time.Second)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateStep(ctx, &step, expect) }))
	got, err := s.GetSteps(ctx, j.ID)
	require.NoError(t, err)
	requireSteps(t, []store.Step{step}, got)

	// The step is now RUNNING, run 1, attempt 1; any other expectation loses.
	stale := []struct {
		name   string
		expect store.StepExpect
	}{
		{"status", store.StepExpect{Status: store.StepQueued, Run: 1, Attempts: 1}},
		{"run", store.StepExpect{Status: store.StepRunning, Run: 2, Attempts: 1}},
		{"attempts", store.StepExpect{Status: store.StepRunning, Run: 1, Attempts: 0}},
		{"original", expect},
	}
	for _, tc := range stale {
		update := step
		update.Status = store.StepSucceeded
		update.Output = json.RawMessage(`{"lost": "update"}`)
		err := s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateStep(ctx, &update, tc.expect) })
		require.ErrorIs(t, err, store.ErrConflict, tc.name)
	}
	got, err = s.GetSteps(ctx, j.ID)
	require.NoError(t, err)
	requireSteps(t, []store.Step{step}, got)

	// The winner's expectation matches.
	expect = step.Expect()
	step.Status = store.StepSucceeded
	step.Output = json.RawMessage(`{"answer": 42}`)
	step.LeaseOwner = ""
	step.LeaseExpiresAt = nil
	step.FinishedAt = ptr(base.Add(2 * time.Second))
	step.UpdatedAt = base.Add(2 * time.Second)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateStep(ctx, &step, expect) }))
	got, err = s.GetSteps(ctx, j.ID)
	require.NoError(t, err)
	requireSteps(t, []store.Step{step}, got)

	missing := step
	missing.Name = "missing"
	err = s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateStep(ctx, &missing, missing.Expect()) })
	require.ErrorIs(t, err, store.ErrNotFound)
}

// testLockJobSerializes runs two writers that each lock the job 50 times, bump LastSeq and append the
// event with that seq: without the lock they would read the same LastSeq and collide.
func testLockJobSerializes(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	seed(t, s, []*store.Job{j})

	const writers, rounds = 2, 50
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for range rounds {
				err := s.Tx(ctx, func(tx store.Tx) error {
					locked, err := tx.LockJob(ctx, j.ID)
					if err != nil {
						return err
					}
					locked.LastSeq++
					err = tx.AppendEvents(ctx, []store.Event{{
						JobID: j.ID, Seq: locked.LastSeq, Type: store.EventJob, Status: string(store.JobRunning),
						Attempt: w, At: base,
					}})
					if err != nil {
						return err
					}
					return tx.UpdateJob(ctx, locked)
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, err := s.GetJob(ctx, store.AllTenants, j.ID)
	require.NoError(t, err)
	require.EqualValues(t, writers*rounds, got.LastSeq)
	events, err := s.ListEvents(ctx, j.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, events, writers*rounds)
	for i, e := range events {
		require.EqualValues(t, i+1, e.Seq)
	}
}

// testLockJobWaitsForHolder holds a job's lock in one transaction: a LockJob of the same job in
// another transaction does not return while the lock is held, and then returns what the holder
// committed.
func testLockJobWaitsForHolder(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	seed(t, s, []*store.Job{j})

	locked := make(chan struct{})
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFirst := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseFirst()
	first := make(chan error, 1)
	go func() {
		first <- s.Tx(ctx, func(tx store.Tx) error {
			job, err := tx.LockJob(ctx, j.ID)
			if err != nil {
				return err
			}
			job.LastSeq = 1
			if err := tx.UpdateJob(ctx, job); err != nil {
				return err
			}
			close(locked)
			<-release
			return nil
		})
	}()
	<-locked

	// While the lock is held, a LockJob (or, on SQLite, a second write transaction) cannot finish.
	shortCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var got *store.Job
	err := s.Tx(shortCtx, func(tx store.Tx) error {
		job, err := tx.LockJob(shortCtx, j.ID)
		got = job
		return err
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Nil(t, got, "LockJob returned while another transaction held the job")

	second := make(chan *store.Job, 1)
	secondErr := make(chan error, 1)
	go func() {
		secondErr <- s.Tx(ctx, func(tx store.Tx) error {
			job, err := tx.LockJob(ctx, j.ID)
			second <- job
			return err
		})
	}()
	releaseFirst()
	require.NoError(t, <-first)
	require.NoError(t, <-secondErr)
	require.EqualValues(t, 1, (<-second).LastSeq, "LockJob returns the state the holder committed")
}

func testEvents(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	seed(t, s, []*store.Job{j})
	events := []store.Event{
		{JobID: j.ID, Seq: 1, Type: store.EventJob, Status: string(store.JobRunning), At: base.Add(1500 * time.Nanosecond)},
		{JobID: j.ID, Seq: 2, Type: store.EventStep, Step: "a", Status: string(store.StepRunning), Attempt: 1, Run: 1, At: base.Add(time.Second)},
		{JobID: j.ID, Seq: 3, Type: store.EventStep, Step: "a", Status: string(store.StepRetrying), Attempt: 1, Run: 1,
			Error: "HTTP 503", Reason: "retry", At: base.Add(2 * time.Second)},
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.AppendEvents(ctx, events) }))
	require.Equal(t, base.Add(time.Microsecond), events[0].At, "AppendEvents normalizes times")

	got, err := s.ListEvents(ctx, j.ID, 0, 0)
	require.NoError(t, err)
	require.Equal(t, events, got)

	err = s.Tx(ctx, func(tx store.Tx) error {
		return tx.AppendEvents(ctx, []store.Event{
			{JobID: j.ID, Seq: 4, Type: store.EventJob, Status: string(store.JobRunning), At: base},
			{JobID: j.ID, Seq: 2, Type: store.EventJob, Status: string(store.JobRunning), At: base},
		})
	})
	require.ErrorIs(t, err, store.ErrDuplicate)

	got, err = s.ListEvents(ctx, j.ID, 1, 0)
	require.NoError(t, err)
	require.Equal(t, events[1:], got, "the failed batch left nothing")
	got, err = s.ListEvents(ctx, j.ID, 1, 1)
	require.NoError(t, err)
	require.Equal(t, events[1:2], got)
	got, err = s.ListEvents(ctx, j.ID, 3, 10)
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = s.ListEvents(ctx, uuid.NewString(), 0, 10)
	require.NoError(t, err)
	require.Empty(t, got)
}

func testOutbox(t *testing.T, s store.Store) {
	ctx := testContext(t)
	tasks := []store.OutboxTask{
		{TaskID: "job1/a/1/1", Queue: "heavy", TypeName: "cao:step", Payload: []byte(`{"job_id":"1"}`), CreatedAt: base},
		{TaskID: "job1/b/1/1", Queue: "default", TypeName: "cao:step", Payload: []byte{0, 1, 2, 255},
			ProcessAt: ptr(base.Add(time.Minute + time.Nanosecond)), CreatedAt: base},
		{TaskID: "job1/c/1/1", Queue: "medium", TypeName: "cao:step", Payload: []byte{}, CreatedAt: base},
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertOutbox(ctx, tasks) }))
	for i, task := range tasks {
		require.Positive(t, task.ID, "task %d gets an id", i)
		if i > 0 {
			require.Greater(t, task.ID, tasks[i-1].ID, "ids increase in insertion order")
		}
	}
	require.Equal(t, base.Add(time.Minute), *tasks[1].ProcessAt)
	later := []store.OutboxTask{{TaskID: "job2/a/1/1", Queue: "default", TypeName: "cao:step", Payload: []byte("x")}}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertOutbox(ctx, later) }))
	require.Greater(t, later[0].ID, tasks[2].ID)
	require.False(t, later[0].CreatedAt.IsZero(), "a zero CreatedAt is set to now")

	n, err := s.CountOutbox(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 4, n)

	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		claimed, err := tx.ClaimOutbox(ctx, farFuture, 2)
		if err != nil {
			return err
		}
		require.Equal(t, tasks[:2], claimed, "oldest first, fields intact")
		return tx.DeleteOutbox(ctx, taskIDs(claimed))
	}))
	n, err = s.CountOutbox(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)

	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		claimed, err := tx.ClaimOutbox(ctx, farFuture, 0)
		if err != nil {
			return err
		}
		require.Equal(t, append(tasks[2:3:3], later...), claimed)
		if err := tx.DeleteOutbox(ctx, nil); err != nil {
			return err
		}
		return tx.DeleteOutbox(ctx, []int64{tasks[0].ID, claimed[0].ID, 1 << 40})
	}))
	n, err = s.CountOutbox(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

// testOutboxConcurrentClaimers drains the outbox with several relays at once: each task is claimed
// exactly once.
func testOutboxConcurrentClaimers(t *testing.T, s store.Store) {
	ctx := testContext(t)
	const total, relays = 30, 4
	tasks := make([]store.OutboxTask, total)
	for i := range tasks {
		tasks[i] = store.OutboxTask{TaskID: uuid.NewString(), Queue: "default", TypeName: "cao:step", Payload: []byte("p")}
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertOutbox(ctx, tasks) }))

	var mu sync.Mutex
	claimedBy := map[int64]int{}
	errs := make(chan error, relays)
	var wg sync.WaitGroup
	for range relays {
		wg.Go(func() {
			for {
				var ids []int64
				err := s.Tx(ctx, func(tx store.Tx) error {
					claimed, err := tx.ClaimOutbox(ctx, farFuture, 3)
					if err != nil {
						return err
					}
					ids = taskIDs(claimed)
					return tx.DeleteOutbox(ctx, ids)
				})
				if err != nil {
					errs <- err
					return
				}
				if len(ids) == 0 {
					return
				}
				mu.Lock()
				for _, id := range ids {
					claimedBy[id]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, claimedBy, total)
	for id, times := range claimedBy {
		require.Equal(t, 1, times, "task %d claimed %d times", id, times)
	}
	n, err := s.CountOutbox(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

// testOutboxClaimSkipsClaimed holds a claim open while a second transaction claims: on Postgres the
// second one runs at once and skips the locked tasks; on SQLite it waits for the first to commit.
// Either way the two claims are disjoint and together cover every task.
func testOutboxClaimSkipsClaimed(t *testing.T, s store.Store) {
	ctx := testContext(t)
	tasks := make([]store.OutboxTask, 5)
	for i := range tasks {
		tasks[i] = store.OutboxTask{TaskID: uuid.NewString(), Queue: "default", TypeName: "cao:step", Payload: []byte("p")}
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertOutbox(ctx, tasks) }))

	claimed1 := make(chan []int64, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFirst := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseFirst()
	first := make(chan error, 1)
	go func() {
		first <- s.Tx(ctx, func(tx store.Tx) error {
			claimed, err := tx.ClaimOutbox(ctx, farFuture, 3)
			if err != nil {
				return err
			}
			ids := taskIDs(claimed)
			if err := tx.DeleteOutbox(ctx, ids); err != nil {
				return err
			}
			claimed1 <- ids
			<-release
			return nil
		})
	}()
	ids1 := <-claimed1
	require.Len(t, ids1, 3)
	if s.Dialect() != "postgres" {
		releaseFirst() // SQLite has one writer: the second claim can only run after the first commits
	}
	var ids2 []int64
	// Without SKIP LOCKED the second claim would wait for the first forever: fail fast instead.
	claimCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, s.Tx(claimCtx, func(tx store.Tx) error {
		claimed, err := tx.ClaimOutbox(claimCtx, farFuture, 10)
		ids2 = taskIDs(claimed)
		return err
	}))
	releaseFirst()
	require.NoError(t, <-first)
	require.Len(t, ids2, 2)
	all := append(slices.Clone(ids1), ids2...)
	slices.Sort(all)
	require.Equal(t, taskIDs(tasks), all)
}

func testIdempotencyKeys(t *testing.T, s store.Store) {
	ctx := testContext(t)
	rec := &store.IdempotencyRecord{
		Key:         "client-key-1",
		RequestHash: "sha256:aaa",
		CreatedAt:   base.Add(1001 * time.Nanosecond),
		ExpiresAt:   base.Add(24 * time.Hour),
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertIdempotencyKey(ctx, rec) }))
	got, err := s.GetIdempotencyKey(ctx, "", "client-key-1")
	require.NoError(t, err)
	require.Equal(t, store.IdempotencyRecord{
		Tenant: store.DefaultTenant, Key: "client-key-1", RequestHash: "sha256:aaa", CreatedAt: base.Add(time.Microsecond), ExpiresAt: base.Add(24 * time.Hour),
	}, *got)

	dup := *rec
	dup.RequestHash = "sha256:bbb"
	err = s.Tx(ctx, func(tx store.Tx) error { return tx.InsertIdempotencyKey(ctx, &dup) })
	require.ErrorIs(t, err, store.ErrDuplicate)

	jobID := uuid.NewString()
	rec.JobID = jobID
	rec.RequestHash = "sha256:ccc"
	rec.ExpiresAt = base.Add(48 * time.Hour)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateIdempotencyKey(ctx, rec) }))
	got, err = s.GetIdempotencyKey(ctx, "", "client-key-1")
	require.NoError(t, err)
	require.Equal(t, *rec, *got)

	missing := &store.IdempotencyRecord{Key: "nope", RequestHash: "h", CreatedAt: base, ExpiresAt: base}
	err = s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateIdempotencyKey(ctx, missing) })
	require.ErrorIs(t, err, store.ErrNotFound)

	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.DeleteIdempotencyKey(ctx, "", "client-key-1") }))
	_, err = s.GetIdempotencyKey(ctx, "", "client-key-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.DeleteIdempotencyKey(ctx, "", "client-key-1") }),
		"deleting a missing key is not an error")
}

func testIdempotencyKeysExpire(t *testing.T, s store.Store) {
	ctx := testContext(t)
	now := base.Add(100 * time.Millisecond)
	expiries := map[string]time.Time{
		"expired-1us":    now.Add(-time.Microsecond),
		"expired-1s":     now.Add(-time.Second),
		"expired-90ms":   base.Add(90 * time.Millisecond),
		"at-now":         now,
		"valid-1us":      now.Add(time.Microsecond),
		"valid-next-sec": base.Add(time.Second),
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		for key, exp := range expiries {
			if err := tx.InsertIdempotencyKey(ctx, &store.IdempotencyRecord{Key: key, RequestHash: "h", CreatedAt: base, ExpiresAt: exp}); err != nil {
				return err
			}
		}
		return nil
	}))
	var deleted int64
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		var err error
		deleted, err = tx.DeleteExpiredIdempotencyKeys(ctx, now)
		return err
	}))
	require.EqualValues(t, 3, deleted)
	for key := range expiries {
		_, err := s.GetIdempotencyKey(ctx, "", key)
		if strings.HasPrefix(key, "expired") {
			require.ErrorIs(t, err, store.ErrNotFound, key)
		} else {
			require.NoError(t, err, key)
		}
	}
}

// listFixture inserts 25 jobs created within one second, apart by as little as a microsecond (some
// exactly equal, so the id breaks the tie), plus the second's edges. It returns them in the order
// ListJobs must return them: (CreatedAt, ID) descending.
func listFixture(t *testing.T, s store.Store) []store.Job {
	t.Helper()
	offsets := []int64{ // µs
		0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 9999, 10000, 90000, 99999, 100000,
		123456, 500000, 500000, 500000, 654321, 900000, 999998, 999999,
		-1,      // the previous second's last microsecond
		1000000, // the next second exactly
	}
	statuses := []store.JobStatus{store.JobPending, store.JobRunning, store.JobCompleted}
	jobs := make([]*store.Job, len(offsets))
	// Insert in an order unrelated to creation time.
	for i, k := range rotate(len(offsets), 7) {
		jobs[i] = newJob([]string{"alpha", "beta"}[k%2], statuses[k%3], base.Add(time.Duration(offsets[k])*time.Microsecond))
	}
	seed(t, s, jobs)
	want := make([]store.Job, len(jobs))
	for i, j := range jobs {
		want[i] = *j
	}
	slices.SortFunc(want, func(a, b store.Job) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return want
}

// rotate returns 0..n-1 visited with a stride coprime to n.
func rotate(n, stride int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i * stride % n
	}
	return out
}

func filterJobs(jobs []store.Job, keep func(store.Job) bool) []store.Job {
	var out []store.Job
	for _, j := range jobs {
		if keep(j) {
			out = append(out, j)
		}
	}
	return out
}

// pageAll lists every job matching f, page by page, following the cursor of each page's last job.
func pageAll(t *testing.T, s store.Store, f store.JobFilter) []store.Job {
	t.Helper()
	ctx := testContext(t)
	var all []store.Job
	for range 100 {
		page, err := s.ListJobs(ctx, f)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), f.Limit)
		all = append(all, page...)
		if len(page) < f.Limit {
			return all
		}
		last := page[len(page)-1]
		f.After = &store.Cursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	t.Fatal("pagination does not end")
	return nil
}

func testListJobsPagination(t *testing.T, s store.Store) {
	ctx := testContext(t)
	want := listFixture(t, s)

	all, err := s.ListJobs(ctx, store.JobFilter{Scope: store.AllTenants})
	require.NoError(t, err)
	require.Equal(t, jobIDs(want), jobIDs(all), "Limit 0 lists up to the default page size")
	for i := range want {
		requireJob(t, &want[i], &all[i])
	}

	for _, limit := range []int{1, 7, 25, 1000} {
		got := pageAll(t, s, store.JobFilter{Scope: store.AllTenants, Limit: limit})
		require.Equal(t, jobIDs(want), jobIDs(got), "limit %d", limit)
	}

	// A cursor from a time with nanoseconds behaves like its microsecond.
	mid := want[10]
	page, err := s.ListJobs(ctx, store.JobFilter{Scope: store.AllTenants, Limit: 3, After: &store.Cursor{
		CreatedAt: mid.CreatedAt.Add(999 * time.Nanosecond), ID: mid.ID,
	}})
	require.NoError(t, err)
	require.Equal(t, jobIDs(want[11:14]), jobIDs(page))

	_, err = s.ListJobs(ctx, store.JobFilter{Scope: store.AllTenants, Limit: 3, After: &store.Cursor{CreatedAt: base, ID: "not-a-uuid"}})
	require.Error(t, err)
}

func testListJobsFilters(t *testing.T, s store.Store) {
	want := listFixture(t, s)
	cases := []struct {
		name   string
		filter store.JobFilter
		keep   func(store.Job) bool
	}{
		{"status", store.JobFilter{Scope: store.AllTenants, Status: store.JobRunning, Limit: 3},
			func(j store.Job) bool { return j.Status == store.JobRunning }},
		{"feature", store.JobFilter{Scope: store.AllTenants, Feature: "alpha", Limit: 4},
			func(j store.Job) bool { return j.FeatureName == "alpha" }},
		{"status and feature", store.JobFilter{Scope: store.AllTenants, Status: store.JobPending, Feature: "beta", Limit: 2},
			func(j store.Job) bool { return j.Status == store.JobPending && j.FeatureName == "beta" }},
		{"no match", store.JobFilter{Scope: store.AllTenants, Status: store.JobCancelled, Limit: 5},
			func(j store.Job) bool { return false }},
		{"unknown feature", store.JobFilter{Scope: store.AllTenants, Feature: "gamma", Limit: 5},
			func(j store.Job) bool { return false }},
	}
	for _, tc := range cases {
		got := pageAll(t, s, tc.filter)
		require.Equal(t, jobIDs(filterJobs(want, tc.keep)), jobIDs(got), tc.name)
	}
}

func testListExpiredSteps(t *testing.T, s store.Store) {
	ctx := testContext(t)
	// now has sub-microsecond digits; the store compares at microsecond precision.
	now := base.Add(100*time.Millisecond + 1500*time.Nanosecond)
	now = now.In(time.FixedZone("UTC-5", -5*3600))
	j := newJob("business_plan", store.JobRunning, base)
	lease := map[string]*time.Time{
		"expired-1us":    ptr(now.Add(-time.Microsecond)),
		"expired-2s":     ptr(now.Add(-2 * time.Second)),
		"expired-90ms":   ptr(base.Add(90 * time.Millisecond)),
		"at-now":         ptr(now),
		"valid-1us":      ptr(now.Add(time.Microsecond)),
		"valid-next-sec": ptr(base.Add(time.Second)),
		"no-lease":       nil,
		"queued-expired": ptr(now.Add(-time.Second)),
	}
	var steps []store.Step
	for name, exp := range lease {
		status := store.StepRunning
		if strings.HasPrefix(name, "queued") {
			status = store.StepQueued
		}
		step := newStep(j.ID, name, len(steps), status, base)
		step.LeaseExpiresAt = exp
		steps = append(steps, step)
	}
	seed(t, s, []*store.Job{j}, steps...)

	got, err := s.ListExpiredSteps(ctx, now, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"expired-2s", "expired-90ms", "expired-1us"}, stepNames(got), "oldest lease first")
	got, err = s.ListExpiredSteps(ctx, now, 2)
	require.NoError(t, err)
	require.Equal(t, []string{"expired-2s", "expired-90ms"}, stepNames(got))
}

func testListWaitingSteps(t *testing.T, s store.Store) {
	ctx := testContext(t)
	before := base.Add(100*time.Millisecond + 999*time.Nanosecond)
	j := newJob("business_plan", store.JobRunning, base)
	updated := []struct {
		name   string
		status store.StepStatus
		at     time.Time
	}{
		{"queued-1us", store.StepQueued, before.Add(-time.Microsecond)},
		{"retrying-1s", store.StepRetrying, before.Add(-time.Second)},
		{"queued-90ms", store.StepQueued, base.Add(90 * time.Millisecond)},
		{"queued-at", store.StepQueued, before},
		{"retrying-later", store.StepRetrying, before.Add(time.Microsecond)},
		{"queued-next-sec", store.StepQueued, base.Add(time.Second)},
		{"running-old", store.StepRunning, before.Add(-time.Hour)},
		{"pending-old", store.StepPending, before.Add(-time.Hour)},
		{"succeeded-old", store.StepSucceeded, before.Add(-time.Hour)},
	}
	var steps []store.Step
	for i, u := range updated {
		step := newStep(j.ID, u.name, i, u.status, base.Add(-2*time.Hour))
		step.UpdatedAt = u.at
		steps = append(steps, step)
	}
	seed(t, s, []*store.Job{j}, steps...)

	got, err := s.ListWaitingSteps(ctx, before, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"retrying-1s", "queued-90ms", "queued-1us"}, stepNames(got))
	got, err = s.ListWaitingSteps(ctx, before, 1)
	require.NoError(t, err)
	require.Equal(t, []string{"retrying-1s"}, stepNames(got))
}

func testListIdleJobs(t *testing.T, s store.Store) {
	ctx := testContext(t)
	before := base.Add(100 * time.Millisecond)
	mk := func(status store.JobStatus, updated time.Time, stuck *time.Time) *store.Job {
		j := newJob("business_plan", status, base.Add(-2*time.Hour))
		j.UpdatedAt = updated
		j.StuckAt = stuck
		return j
	}
	pending1us := mk(store.JobPending, before.Add(-time.Microsecond), nil)
	running1s := mk(store.JobRunning, before.Add(-time.Second), nil)
	running90ms := mk(store.JobRunning, base.Add(90*time.Millisecond), nil)
	jobs := []*store.Job{
		pending1us, running1s, running90ms,
		mk(store.JobRunning, before.Add(-time.Hour), ptr(before.Add(-time.Minute))), // already stuck
		mk(store.JobCompleted, before.Add(-time.Hour), nil),
		mk(store.JobFailed, before.Add(-time.Hour), nil),
		mk(store.JobRunning, before, nil),
		mk(store.JobPending, before.Add(time.Microsecond), nil),
	}
	seed(t, s, jobs)

	got, err := s.ListIdleJobs(ctx, before, 0)
	require.NoError(t, err)
	require.Equal(t, []string{running1s.ID, running90ms.ID, pending1us.ID}, jobIDs(got))
	got, err = s.ListIdleJobs(ctx, before, 2)
	require.NoError(t, err)
	require.Equal(t, []string{running1s.ID, running90ms.ID}, jobIDs(got))
}

func testListStuckJobs(t *testing.T, s store.Store) {
	ctx := testContext(t)
	before := base.Add(100 * time.Millisecond)
	mk := func(status store.JobStatus, stuck *time.Time) *store.Job {
		j := newJob("business_plan", status, base.Add(-2*time.Hour))
		j.StuckAt = stuck
		return j
	}
	running1us := mk(store.JobRunning, ptr(before.Add(-time.Microsecond)))
	pending1h := mk(store.JobPending, ptr(before.Add(-time.Hour)))
	running90ms := mk(store.JobRunning, ptr(base.Add(90*time.Millisecond)))
	jobs := []*store.Job{
		running1us, pending1h, running90ms,
		mk(store.JobRunning, ptr(before)),
		mk(store.JobRunning, ptr(before.Add(time.Microsecond))),
		mk(store.JobCompleted, ptr(before.Add(-time.Hour))),
		mk(store.JobRunning, nil),
	}
	seed(t, s, jobs)

	got, err := s.ListStuckJobs(ctx, before, 0)
	require.NoError(t, err)
	require.Equal(t, []string{pending1h.ID, running90ms.ID, running1us.ID}, jobIDs(got))
	got, err = s.ListStuckJobs(ctx, before, 1)
	require.NoError(t, err)
	require.Equal(t, []string{pending1h.ID}, jobIDs(got))
}

func testJobInputs(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	seed(t, s, []*store.Job{j})
	inputs := []store.JobInput{
		{JobID: j.ID, Version: 2, Input: json.RawMessage(`{"business_name": "Acme 2"}`), CreatedAt: base.Add(time.Hour)},
		{JobID: j.ID, Version: 1, Input: json.RawMessage(`{"business_name": "Acme"}`), CreatedAt: base},
	}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		for i := range inputs {
			if err := tx.InsertJobInput(ctx, &inputs[i]); err != nil {
				return err
			}
		}
		return nil
	}))
	got, err := s.GetJobInputs(ctx, j.ID)
	require.NoError(t, err)
	require.Len(t, got, 2)
	for i, want := range []store.JobInput{inputs[1], inputs[0]} {
		require.Equal(t, want.Version, got[i].Version)
		require.Equal(t, want.JobID, got[i].JobID)
		require.Equal(t, canonTime(want.CreatedAt), canonTime(got[i].CreatedAt))
		require.JSONEq(t, string(want.Input), string(got[i].Input))
	}

	err = s.Tx(ctx, func(tx store.Tx) error {
		return tx.InsertJobInput(ctx, &store.JobInput{JobID: j.ID, Version: 2, Input: json.RawMessage(`{}`), CreatedAt: base})
	})
	require.ErrorIs(t, err, store.ErrDuplicate)

	err = s.Tx(ctx, func(tx store.Tx) error {
		return tx.InsertJobInput(ctx, &store.JobInput{JobID: uuid.NewString(), Version: 1, Input: json.RawMessage(`{}`), CreatedAt: base})
	})
	require.Error(t, err, "an input needs its job")

	none, err := s.GetJobInputs(ctx, uuid.NewString())
	require.NoError(t, err)
	require.Empty(t, none)
}

func testAttempts(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	// Position, not name, orders the steps.
	seed(t, s, []*store.Job{j},
		newStep(j.ID, "zeta", 0, store.StepRunning, base),
		newStep(j.ID, "alpha", 1, store.StepRunning, base))
	mk := func(step string, run, attempt int) store.Attempt {
		return store.Attempt{
			JobID: j.ID, Step: step, Run: run, Attempt: attempt, WorkerID: "w1", Status: store.AttemptRunning,
			StartedAt: base.Add(time.Duration(run*10+attempt) * time.Second),
		}
	}
	attempts := []store.Attempt{mk("alpha", 1, 1), mk("zeta", 2, 1), mk("zeta", 1, 2), mk("zeta", 1, 1)}
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		for i := range attempts {
			if err := tx.UpsertAttempt(ctx, &attempts[i]); err != nil {
				return err
			}
		}
		return nil
	}))
	got, err := s.GetAttempts(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, []store.Attempt{attempts[3], attempts[2], attempts[1], attempts[0]}, got)

	// Upsert replaces the attempt with the same key.
	done := attempts[3]
	done.Status = store.AttemptFailed
	done.ErrorClass = "retryable"
	done.Error = "HTTP 503"
	done.HTTPStatus = 503
	done.WorkerID = "w2"
	done.FinishedAt = ptr(base.Add(time.Minute + 1234*time.Nanosecond))
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.UpsertAttempt(ctx, &done) }))
	require.Equal(t, base.Add(time.Minute+time.Microsecond), *done.FinishedAt)
	got, err = s.GetAttempts(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, []store.Attempt{done, attempts[2], attempts[1], attempts[0]}, got)

	none, err := s.GetAttempts(ctx, uuid.NewString())
	require.NoError(t, err)
	require.Empty(t, none)
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobRunning, base)
	seed(t, s, []*store.Job{j})
	missing := uuid.NewString()
	cases := []struct {
		name string
		call func() error
	}{
		{"GetJob", func() error { _, err := s.GetJob(ctx, store.AllTenants, missing); return err }},
		{"GetJob not a UUID", func() error { _, err := s.GetJob(ctx, store.AllTenants, "not-a-uuid"); return err }},
		{"GetJob empty id", func() error { _, err := s.GetJob(ctx, store.AllTenants, ""); return err }},
		{"GetIdempotencyKey", func() error { _, err := s.GetIdempotencyKey(ctx, "", "missing"); return err }},
		{"LockJob", func() error {
			return s.Tx(ctx, func(tx store.Tx) error { _, err := tx.LockJob(ctx, missing); return err })
		}},
		{"LockJob not a UUID", func() error {
			return s.Tx(ctx, func(tx store.Tx) error { _, err := tx.LockJob(ctx, "42"); return err })
		}},
		{"UpdateJob", func() error {
			return s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateJob(ctx, newJobWithID(missing)) })
		}},
		{"UpdateStep", func() error {
			step := newStep(j.ID, "missing", 0, store.StepQueued, base)
			return s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateStep(ctx, &step, step.Expect()) })
		}},
		{"UpdateStep of missing job", func() error {
			step := newStep(missing, "a", 0, store.StepQueued, base)
			return s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateStep(ctx, &step, step.Expect()) })
		}},
		{"UpdateIdempotencyKey", func() error {
			r := &store.IdempotencyRecord{Key: "missing", RequestHash: "h", CreatedAt: base, ExpiresAt: base}
			return s.Tx(ctx, func(tx store.Tx) error { return tx.UpdateIdempotencyKey(ctx, r) })
		}},
	}
	for _, tc := range cases {
		require.ErrorIs(t, tc.call(), store.ErrNotFound, tc.name)
	}
}

var errBoom = errors.New("boom")

// seedInTx writes one of everything, so that a rollback can be checked to leave nothing.
func seedInTx(ctx context.Context, tx store.Tx, j *store.Job) error {
	if err := tx.InsertJob(ctx, j); err != nil {
		return err
	}
	if err := tx.InsertSteps(ctx, []store.Step{newStep(j.ID, "a", 0, store.StepQueued, base)}); err != nil {
		return err
	}
	if err := tx.AppendEvents(ctx, []store.Event{{JobID: j.ID, Seq: 1, Type: store.EventJob, Status: "PENDING", At: base}}); err != nil {
		return err
	}
	if err := tx.InsertOutbox(ctx, []store.OutboxTask{{TaskID: j.ID, Queue: "default", TypeName: "cao:step", Payload: []byte("p")}}); err != nil {
		return err
	}
	return tx.InsertIdempotencyKey(ctx, &store.IdempotencyRecord{Key: j.ID, RequestHash: "h", CreatedAt: base, ExpiresAt: base})
}

func requireNothingOf(t *testing.T, s store.Store, j *store.Job) {
	t.Helper()
	ctx := testContext(t)
	_, err := s.GetJob(ctx, store.AllTenants, j.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
	steps, err := s.GetSteps(ctx, j.ID)
	require.NoError(t, err)
	require.Empty(t, steps)
	events, err := s.ListEvents(ctx, j.ID, 0, 0)
	require.NoError(t, err)
	require.Empty(t, events)
	n, err := s.CountOutbox(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	_, err = s.GetIdempotencyKey(ctx, "", j.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func testTxRollbackOnError(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobPending, base)
	calls := 0
	err := s.Tx(ctx, func(tx store.Tx) error {
		calls++
		if err := seedInTx(ctx, tx, j); err != nil {
			return err
		}
		return errBoom
	})
	require.ErrorIs(t, err, errBoom)
	require.Equal(t, 1, calls, "an application error is not retried")
	requireNothingOf(t, s, j)

	// The store still works after the rollback.
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return seedInTx(ctx, tx, j) }))
	_, err = s.GetJob(ctx, store.AllTenants, j.ID)
	require.NoError(t, err)
}

func testTxRollbackOnPanic(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobPending, base)
	require.PanicsWithValue(t, "boom", func() {
		_ = s.Tx(ctx, func(tx store.Tx) error {
			if err := seedInTx(ctx, tx, j); err != nil {
				return err
			}
			panic("boom")
		})
	})
	requireNothingOf(t, s, j)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return seedInTx(ctx, tx, j) }),
		"the store still works after a panic")
}

// testTxIsolation checks that a transaction reads its own writes and nobody else does before commit.
func testTxIsolation(t *testing.T, s store.Store) {
	ctx := testContext(t)
	j := newJob("business_plan", store.JobPending, base)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		if err := tx.InsertJob(ctx, j); err != nil {
			return err
		}
		if _, err := tx.GetJob(ctx, store.AllTenants, j.ID); err != nil {
			return err
		}
		if _, err := s.GetJob(ctx, store.AllTenants, j.ID); !errors.Is(err, store.ErrNotFound) {
			return errors.Join(errors.New("uncommitted job visible outside its transaction"), err)
		}
		return nil
	}))
	_, err := s.GetJob(ctx, store.AllTenants, j.ID)
	require.NoError(t, err)
}

func testCancelledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(testContext(t))
	cancel()
	called := false
	err := s.Tx(ctx, func(tx store.Tx) error { called = true; return nil })
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, called)
	_, err = s.GetJob(ctx, store.AllTenants, uuid.NewString())
	require.Error(t, err)
	require.NotErrorIs(t, err, store.ErrNotFound)
}

func testPingAndDialect(t *testing.T, s store.Store) {
	require.NoError(t, s.Ping(testContext(t)))
	require.Contains(t, []string{"postgres", "sqlite"}, s.Dialect())
}

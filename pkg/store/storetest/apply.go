package storetest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

// farFuture is later than every time the suite writes: ClaimOutbox(ctx, farFuture, n) claims all.
var farFuture = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

// applyTests are the hot-path tests: LoadJob, Apply and ExtendLease.
var applyTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"ApplyCreateThenLoad", testApplyCreateThenLoad},
	{"ApplyUpdate", testApplyUpdate},
	{"ApplyVersionConflictWritesNothing", testApplyVersionConflict},
	{"ApplyStepConflictWritesNothing", testApplyStepConflict},
	{"ApplyCreateBindsIdempotencyKey", testApplyCreateBindsKey},
	{"ExtendLease", testExtendLease},
	{"LoadJobNotFound", testLoadJobNotFound},
	{"LastSeqs", testLastSeqs},
	{"ApplyManyJobsAtOnce", testApplyManyJobsAtOnce},
	{"CreateManyJobsAtOnce", testCreateManyJobsAtOnce},
}

// createChange is a new job with two steps (the first queued), its first input, two events and the
// first step's task.
func createChange(at time.Time) *store.Change {
	j := newJob("plan", store.JobPending, at)
	a := newStep(j.ID, "a", 0, store.StepQueued, at)
	b := newStep(j.ID, "b", 1, store.StepPending, at)
	b.Needs = []string{"a"}
	j.LastSeq = 2
	return &store.Change{
		Job:    j,
		Create: true,
		Steps:  []store.StepChange{{Step: a}, {Step: b}},
		Inputs: []store.JobInput{{Version: 1, Input: j.Input, CreatedAt: at}},
		Events: []store.Event{
			{Seq: 1, Type: store.EventJob, Status: "PENDING", Reason: "created", At: at},
			{Seq: 2, Type: store.EventStep, Step: "a", Status: "QUEUED", Run: 1, At: at},
		},
		Outbox: []store.OutboxTask{{TaskID: "t-a", Queue: "default", TypeName: "cao:step", Payload: []byte(`{"x":1}`), CreatedAt: at}},
	}
}

func testApplyCreateThenLoad(t *testing.T, s store.Store) {
	ctx := testContext(t)
	c := createChange(base.Add(123456 * time.Microsecond))
	require.NoError(t, s.Apply(ctx, c))
	require.EqualValues(t, 1, c.Job.Version)
	require.Positive(t, c.Outbox[0].ID, "Apply sets outbox ids")

	evs := requireCreated(t, s, c)
	require.Equal(t, "created", evs[0].Reason)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		claimed, err := tx.ClaimOutbox(ctx, farFuture, 0)
		require.NoError(t, err)
		require.Len(t, claimed, 1)
		require.Equal(t, c.Outbox[0].ID, claimed[0].ID)
		require.Equal(t, []byte(`{"x":1}`), claimed[0].Payload)
		return nil
	}))

	// A second create of the same job id is a duplicate, and writes nothing more.
	again := createChange(base)
	again.Job.ID = c.Job.ID
	require.ErrorIs(t, s.Apply(ctx, again), store.ErrDuplicate)
	n, err := s.CountOutbox(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

// requireCreated checks that the job createChange c made is stored as c has it: the job, its two
// steps, its two events (returned) and its input.
func requireCreated(t *testing.T, s store.Store, c *store.Change) []store.Event {
	t.Helper()
	ctx := testContext(t)
	job, steps, err := s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	requireJob(t, c.Job, job)
	requireSteps(t, []store.Step{c.Steps[0].Step, c.Steps[1].Step}, steps)
	evs, err := s.ListEvents(ctx, c.Job.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, 2)
	inputs, err := s.GetJobInputs(ctx, c.Job.ID)
	require.NoError(t, err)
	require.Len(t, inputs, 1)
	return evs
}

// started is the change that starts step a of the job c created.
func started(c *store.Change, version int64, at time.Time) *store.Change {
	j := *c.Job
	a := c.Steps[0].Step
	exp := a.Expect()
	a.Status, a.Attempts, a.LeaseOwner = store.StepRunning, 1, "w1"
	a.LeaseExpiresAt, a.StartedAt, a.UpdatedAt = ptr(at.Add(10*time.Second)), ptr(at), at
	j.Status, j.StartedAt, j.UpdatedAt = store.JobRunning, ptr(at), at
	j.LastSeq = c.Job.LastSeq + 2
	return &store.Change{
		Job:      &j,
		Version:  version,
		Steps:    []store.StepChange{{Step: a, Expect: exp}},
		Attempts: []store.Attempt{{Step: "a", Run: 1, Attempt: 1, WorkerID: "w1", Status: store.AttemptRunning, StartedAt: at}},
		Events: []store.Event{
			{Seq: c.Job.LastSeq + 1, Type: store.EventStep, Step: "a", Status: "RUNNING", Attempt: 1, Run: 1, At: at},
			{Seq: c.Job.LastSeq + 2, Type: store.EventJob, Status: "RUNNING", At: at},
		},
	}
}

func testApplyUpdate(t *testing.T, s store.Store) {
	ctx := testContext(t)
	c := createChange(base)
	require.NoError(t, s.Apply(ctx, c))
	at := base.Add(time.Second + 500*time.Microsecond)
	u := started(c, c.Job.Version, at)
	u.Job.Output = json.RawMessage(`{"partial": true}`)
	u.Outbox = []store.OutboxTask{
		{TaskID: "t1", Queue: "q", TypeName: "cao:step", Payload: []byte("1"), CreatedAt: at},
		{TaskID: "t2", Queue: "q", TypeName: "cao:step", Payload: []byte("2"), ProcessAt: ptr(at.Add(time.Minute)), CreatedAt: at},
	}
	require.NoError(t, s.Apply(ctx, u))
	require.EqualValues(t, 2, u.Job.Version)
	require.Less(t, u.Outbox[0].ID, u.Outbox[1].ID, "ids in the order of the tasks")

	job, steps, err := s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	requireJob(t, u.Job, job)
	requireSteps(t, []store.Step{u.Steps[0].Step, c.Steps[1].Step}, steps)
	attempts, err := s.GetAttempts(ctx, c.Job.ID)
	require.NoError(t, err)
	require.Len(t, attempts, 1)
	require.Equal(t, "w1", attempts[0].WorkerID)

	// The attempt is upserted by a later change.
	fin := *u.Job
	fin.LastSeq++
	done := u.Steps[0].Step
	exp := done.Expect()
	done.Status, done.Output, done.FinishedAt = store.StepSucceeded, json.RawMessage(`{"ok": 1}`), ptr(at)
	rec := u.Attempts[0]
	rec.Status, rec.FinishedAt, rec.HTTPStatus = store.AttemptSucceeded, ptr(at), 200
	require.NoError(t, s.Apply(ctx, &store.Change{
		Job: &fin, Version: 2, Steps: []store.StepChange{{Step: done, Expect: exp}}, Attempts: []store.Attempt{rec},
		Events: []store.Event{{Seq: fin.LastSeq, Type: store.EventStep, Step: "a", Status: "SUCCEEDED", At: at}},
	}))
	attempts, err = s.GetAttempts(ctx, c.Job.ID)
	require.NoError(t, err)
	require.Len(t, attempts, 1)
	require.Equal(t, store.AttemptSucceeded, attempts[0].Status)
	require.Equal(t, 200, attempts[0].HTTPStatus)
	_, steps, err = s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	require.JSONEq(t, `{"ok": 1}`, string(steps[0].Output))
}

// requireUnchanged checks that the job is still as c left it: version, events, attempts, outbox.
func requireUnchanged(t *testing.T, s store.Store, c *store.Change, outbox int64) {
	t.Helper()
	requireJobAsCreated(t, s, c)
	n, err := s.CountOutbox(testContext(t))
	require.NoError(t, err)
	require.Equal(t, outbox, n)
}

// requireJobAsCreated checks that the job is as create c left it: version, first step, events, no
// attempt.
func requireJobAsCreated(t *testing.T, s store.Store, c *store.Change) {
	t.Helper()
	ctx := testContext(t)
	job, steps, err := s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	requireJob(t, c.Job, job)
	require.Equal(t, c.Steps[0].Step.Status, steps[0].Status)
	evs, err := s.ListEvents(ctx, c.Job.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, int(c.Job.LastSeq))
	attempts, err := s.GetAttempts(ctx, c.Job.ID)
	require.NoError(t, err)
	require.Empty(t, attempts)
}

func testApplyVersionConflict(t *testing.T, s store.Store) {
	ctx := testContext(t)
	c := createChange(base)
	require.NoError(t, s.Apply(ctx, c))
	stale := started(c, c.Job.Version-1, base.Add(time.Second))
	stale.Outbox = []store.OutboxTask{{TaskID: "x", Queue: "q", TypeName: "cao:step", Payload: []byte("1")}}
	require.ErrorIs(t, s.Apply(ctx, stale), store.ErrConflict)
	requireUnchanged(t, s, c, 1)

	// Of two changes computed from the same version, only the first is applied.
	first, second := started(c, c.Job.Version, base.Add(time.Second)), started(c, c.Job.Version, base.Add(2*time.Second))
	require.NoError(t, s.Apply(ctx, first))
	require.ErrorIs(t, s.Apply(ctx, second), store.ErrConflict)
	job, _, err := s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	requireJob(t, first.Job, job)
}

func testApplyStepConflict(t *testing.T, s store.Store) {
	ctx := testContext(t)
	c := createChange(base)
	require.NoError(t, s.Apply(ctx, c))
	bad := started(c, c.Job.Version, base.Add(time.Second))
	bad.Steps[0].Expect.Attempts = 7 // the step is not in that state
	bad.Outbox = []store.OutboxTask{{TaskID: "x", Queue: "q", TypeName: "cao:step", Payload: []byte("1")}}
	require.ErrorIs(t, s.Apply(ctx, bad), store.ErrConflict)
	requireUnchanged(t, s, c, 1)
}

func testApplyCreateBindsKey(t *testing.T, s store.Store) {
	ctx := testContext(t)
	key := "key-" + uuid.NewString()
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		return tx.InsertIdempotencyKey(ctx, &store.IdempotencyRecord{Key: key, RequestHash: "h", CreatedAt: base, ExpiresAt: base.Add(time.Hour)})
	}))
	c := createChange(base)
	c.Job.IdempotencyKey, c.IdempotencyKey = key, key
	require.NoError(t, s.Apply(ctx, c))
	rec, err := s.GetIdempotencyKey(ctx, "", key)
	require.NoError(t, err)
	require.Equal(t, c.Job.ID, rec.JobID)

	// A key that is bound already, or missing, refuses the job: nothing is written.
	for _, k := range []string{key, "missing-" + uuid.NewString()} {
		other := createChange(base)
		other.Job.IdempotencyKey, other.IdempotencyKey = k, k
		require.ErrorIs(t, s.Apply(ctx, other), store.ErrConflict, k)
		_, _, err := s.LoadJob(ctx, other.Job.ID)
		require.ErrorIs(t, err, store.ErrNotFound)
	}
	n, err := s.CountOutbox(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

func testExtendLease(t *testing.T, s store.Store) {
	ctx := testContext(t)
	c := createChange(base)
	require.NoError(t, s.Apply(ctx, c))
	u := started(c, c.Job.Version, base.Add(time.Second))
	require.NoError(t, s.Apply(ctx, u))

	until := base.Add(time.Minute + 250*time.Microsecond)
	require.NoError(t, s.ExtendLease(ctx, c.Job.ID, "a", 1, 1, "w1", until))
	_, steps, err := s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	require.Equal(t, canonTime(until), canonTime(*steps[0].LeaseExpiresAt))
	job, _, err := s.LoadJob(ctx, c.Job.ID)
	require.NoError(t, err)
	require.Equal(t, u.Job.Version, job.Version, "a heartbeat is not a change of the job")

	for _, tc := range []struct {
		step          string
		run, attempt  int
		owner, reason string
	}{
		{"a", 1, 1, "w2", "another owner"},
		{"a", 1, 2, "w1", "another attempt"},
		{"a", 2, 1, "w1", "another run"},
		{"b", 1, 1, "w1", "a step that is not running"},
		{"zz", 1, 1, "w1", "no such step"},
	} {
		require.ErrorIs(t, s.ExtendLease(ctx, c.Job.ID, tc.step, tc.run, tc.attempt, tc.owner, until), store.ErrConflict, tc.reason)
	}
	require.ErrorIs(t, s.ExtendLease(ctx, "not-a-uuid", "a", 1, 1, "w1", until), store.ErrConflict)
}

func testLoadJobNotFound(t *testing.T, s store.Store) {
	ctx := testContext(t)
	for _, id := range []string{uuid.NewString(), "not-a-uuid", ""} {
		_, _, err := s.LoadJob(ctx, id)
		require.ErrorIs(t, err, store.ErrNotFound, id)
	}
}

func testLastSeqs(t *testing.T, s store.Store) {
	ctx := testContext(t)
	c1, c2 := createChange(base), createChange(base)
	require.NoError(t, s.Apply(ctx, c1))
	require.NoError(t, s.Apply(ctx, c2))
	require.NoError(t, s.Apply(ctx, started(c2, c2.Job.Version, base.Add(time.Second))))
	upper := strings.ToUpper(c1.Job.ID)
	got, err := s.LastSeqs(ctx, []string{upper, c2.Job.ID, uuid.NewString(), "not-a-uuid"})
	require.NoError(t, err)
	require.Equal(t, map[string]int64{upper: 2, c2.Job.ID: 4}, got, "by id as given; unknown ids left out")
	got, err = s.LastSeqs(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

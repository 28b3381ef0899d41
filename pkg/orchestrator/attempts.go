package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cao-run/cao/pkg/backoff"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// Target is what a step task asks to run, resolved against the registry.
type Target struct {
	Payload task.StepPayload
	Feature *registry.Feature
	Step    *registry.Step
	Service *registry.Service
}

// Resolve finds what a step task asks to run in the registry, without reading the database when
// the task names its feature. The step's state is checked when the attempt starts (StartAttempt).
// ErrStale means the task should be acknowledged without effect.
func (o *Orchestrator) Resolve(ctx context.Context, p task.StepPayload) (*Target, error) {
	if p.Feature != "" {
		if t, ok := o.target(p, p.Feature); ok {
			return t, nil
		}
	}
	return o.Prepare(ctx, p)
}

// target resolves a task against the registry.
func (o *Orchestrator) target(p task.StepPayload, feature string) (*Target, bool) {
	t := &Target{Payload: p}
	f, ok := o.reg.Feature(feature)
	if ok {
		t.Feature = f
		t.Step, ok = f.Step(p.Step)
	}
	if ok {
		t.Service, ok = o.reg.Service(t.Step.Service)
	}
	return t, ok
}

// Prepare checks, without locking, that a task still matches its step and resolves the step's
// definition and service. ErrStale means the task should be acknowledged without effect.
func (o *Orchestrator) Prepare(ctx context.Context, p task.StepPayload) (*Target, error) {
	job, steps, err := o.liveJob(ctx, p.JobID)
	if err != nil {
		return nil, err
	}
	var st *store.Step
	for i := range steps {
		if steps[i].Name == p.Step {
			st = &steps[i]
		}
	}
	if st == nil || !waitsFor(st, p) {
		return nil, fmt.Errorf("%w: step no longer waits for attempt %d of run %d", ErrStale, p.Attempt, p.Run)
	}
	if p.Tenant == "" {
		p.Tenant = job.Tenant
	}
	t, ok := o.target(p, job.FeatureName)
	if !ok {
		// The registry changed under a running job: fail the step rather than loop forever.
		o.failUnrunnable(ctx, p, fmt.Sprintf("feature %q or step %q or its service is no longer registered", job.FeatureName, p.Step))
		return nil, fmt.Errorf("%w: step definition missing from the registry", ErrStale)
	}
	return t, nil
}

// liveJob reads a job and its steps, without locking, for a task of it; ErrStale when the job no
// longer exists or has ended (the task should be acknowledged without effect).
func (o *Orchestrator) liveJob(ctx context.Context, jobID string) (*store.Job, []store.Step, error) {
	job, steps, err := o.store.LoadJob(ctx, jobID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: job %s does not exist", ErrStale, jobID)
	}
	if err != nil {
		return nil, nil, err
	}
	if job.Status.Terminal() {
		return nil, nil, fmt.Errorf("%w: job is %s", ErrStale, job.Status)
	}
	return job, steps, nil
}

// waitsFor reports whether step s waits for the attempt of task p.
func waitsFor(s *store.Step, p task.StepPayload) bool {
	return s.Status.Waiting() && s.Run == p.Run && s.Attempts == p.Attempt-1
}

func (o *Orchestrator) failUnrunnable(ctx context.Context, p task.StepPayload, msg string) {
	err := o.withJob(ctx, p.JobID, func(u *unit) error {
		s := u.byName[p.Step]
		if s == nil || !s.Status.Waiting() || s.Run != p.Run {
			return nil
		}
		s.Error, s.ErrorClass = msg, "registry"
		u.setStep(s, store.StepFailed, msg, "")
		u.advance()
		return nil
	})
	if err != nil {
		o.cfg.Logger.Warn("fail unrunnable step", "job_id", p.JobID, "step", p.Step, "err", err)
	}
}

// Attempt is a running attempt owned by one worker; it is the fencing token for its heartbeats and result.
type Attempt struct {
	Target
	WorkerID  string
	StartedAt time.Time
	// Input and Outputs are the template data: the job's input and the outputs of its succeeded steps.
	Input   json.RawMessage
	Outputs map[string]json.RawMessage
	// snap is the job as the start of the attempt left it: recording the outcome starts from it.
	snap *snapshot
}

// StartAttempt claims the step for this worker: compare-and-set QUEUED/RETRYING -> RUNNING with the
// attempt number from the task, so a duplicate delivery cannot start it twice (ErrStale). It returns
// everything the call needs (input, upstream outputs) from the same read.
func (o *Orchestrator) StartAttempt(ctx context.Context, t *Target, workerID string) (*Attempt, error) {
	return o.StartAttemptFrom(ctx, t, workerID, Claim{})
}

// Claim is how StartAttemptFrom claims a step.
type Claim struct {
	// From is the step's job as Read read it while the step waited for a slot; nil: the claim reads
	// the job itself, or starts from the snapshot the task carries (carry.go).
	From *Snapshot
	// Holding is set when the worker holds a slot of the step's service while it claims: the slot is
	// idle until the call leaves, so the claim is written at once (store.Change.Urgent).
	Holding bool
}

// Snapshot is a step's job as Read read it, for StartAttemptFrom.
type Snapshot struct{ snap *snapshot }

// Read reads the job of t (one read) for a claim that comes later: a worker reads it while the step
// waits for a slot of its service, so that the claim, once the slot is granted, is one statement.
func (o *Orchestrator) Read(ctx context.Context, t *Target) (*Snapshot, error) {
	job, steps, err := o.store.LoadJob(ctx, t.Payload.JobID)
	if err != nil {
		return nil, err
	}
	return &Snapshot{snap: &snapshot{job: *job, steps: steps}}, nil
}

// quiet reports whether nothing but step name's own claim is expected to change the job of the
// snapshot: no other step is queued, retrying or running (a cancel, a resume or the reaper still
// may, rarely). A claim starts only from a quiet snapshot: starting from a job that moved on costs a
// refused statement and a read, more than the read it saves.
func (s *Snapshot) quiet(name string) bool { return s != nil && s.snap.quiet(name) }

func (sn *snapshot) quiet(name string) bool {
	if sn.job.Status.Terminal() {
		return false
	}
	for i := range sn.steps {
		st := &sn.steps[i]
		if st.Name != name && (st.Status.Waiting() || st.Status == store.StepRunning) {
			return false
		}
	}
	return true
}

// StartAttemptFrom is StartAttempt as c says: starting from snapshot c.From (Read), or else from the
// snapshot the task carries (carry.go), when it is quiet, instead of reading the job, so that the
// claim is one statement. The claim is a compare-and-set on the job's version, so a snapshot the job
// moved on from is refused and the job read again; a snapshot in which the step does not wait for
// the attempt is not trusted either (read again).
func (o *Orchestrator) StartAttemptFrom(ctx context.Context, t *Target, workerID string, c Claim) (*Attempt, error) {
	if c.From == nil {
		c.From = carried(t)
	}
	if c.From.quiet(t.Payload.Step) {
		a, err := o.startAttempt(ctx, t, workerID, c.From.snap, c.Holding)
		if !errors.Is(err, ErrStale) {
			return a, err
		}
	}
	return o.startAttempt(ctx, t, workerID, nil, c.Holding)
}

func (o *Orchestrator) startAttempt(ctx context.Context, t *Target, workerID string, from *snapshot, holding bool) (*Attempt, error) {
	var a *Attempt
	p := t.Payload
	snap, err := o.withJobFrom(ctx, p.JobID, from, func(u *unit) error {
		a = nil
		u.urgent = holding
		s := u.byName[p.Step]
		if u.job.Status.Terminal() || s == nil || !waitsFor(s, p) {
			return ErrStale
		}
		if t.Feature == nil || u.job.FeatureName != t.Feature.Name {
			return ErrStale // the task named another feature than its job's
		}
		outs := u.start(s, workerID)
		a = &Attempt{Target: *t, WorkerID: workerID, StartedAt: u.now, Input: u.job.Input, Outputs: outs}
		return nil
	})
	if errors.Is(err, ErrJobNotFound) {
		return nil, fmt.Errorf("%w: job %s does not exist", ErrStale, p.JobID)
	}
	if err != nil {
		return nil, err
	}
	a.snap = snap
	return a, nil
}

// start moves step s to RUNNING for workerID, with a heartbeat lease and the attempt's record, and
// returns the outputs of the job's succeeded steps (the call's template data).
func (u *unit) start(s *store.Step, workerID string) map[string]json.RawMessage {
	s.Attempts++
	exp := u.now.Add(u.o.cfg.StepLeaseTTL)
	s.LeaseOwner, s.LeaseExpiresAt = workerID, &exp
	s.NextAttemptAt = nil
	if s.StartedAt == nil {
		s.StartedAt = nowPtr(u.now)
	}
	u.setStep(s, store.StepRunning, "", "")
	if u.job.Status == store.JobPending {
		u.setJob(store.JobRunning, "", "")
	}
	u.recordAttempt(store.Attempt{
		Step: s.Name, Run: s.Run, Attempt: s.Attempts, WorkerID: workerID, Status: store.AttemptRunning, StartedAt: u.now,
	})
	outs := map[string]json.RawMessage{}
	for _, other := range u.steps {
		if other.Status == store.StepSucceeded {
			outs[other.Name] = other.Output
		}
	}
	return outs
}

// owns reports whether the attempt still owns step s.
func (a *Attempt) owns(s *store.Step) bool {
	return s != nil && s.Status == store.StepRunning && s.Run == a.Payload.Run &&
		s.Attempts == a.Payload.Attempt && s.LeaseOwner == a.WorkerID
}

// Heartbeat extends the attempt's lease (one single-row compare-and-set, no job lock); ErrFenced means
// the attempt lost the step (reclaimed after its lease expired, or the job was cancelled) and its
// call must be abandoned.
func (o *Orchestrator) Heartbeat(ctx context.Context, a *Attempt) error {
	p := a.Payload
	err := o.store.ExtendLease(ctx, p.JobID, p.Step, p.Run, p.Attempt, a.WorkerID, o.now().Add(o.cfg.StepLeaseTTL))
	if errors.Is(err, store.ErrConflict) {
		return ErrFenced
	}
	return err
}

// Outcome is the result of one attempt.
type Outcome struct {
	Output     json.RawMessage // on success
	Err        error           // nil on success
	Retryable  bool
	RetryAfter time.Duration // server-requested delay before the next attempt (0: use backoff)
	ErrorClass string
	HTTPStatus int
	// Interrupted means the worker abandoned the call (it is shutting down, or lost its lease): the step
	// goes back to its queue and the attempt does not count against the retry budget.
	Interrupted bool
	// At is when the call's answer came (zero: when the outcome is recorded). The attempt, and a step
	// it finishes, end then: a worker gives its service slot back before recording, and the next call
	// of the service may start before the record, never before the answer.
	At time.Time
}

// endedAt is when an attempt that started at started and whose outcome is recorded at now ended.
func (out Outcome) endedAt(started, now time.Time) time.Time {
	switch {
	case out.At.IsZero() || out.At.After(now):
		return now
	case out.At.Before(started):
		return started
	}
	return out.At
}

// Continue decides whether the worker that finished a step also runs a step that became ready, at
// once, instead of queueing it: the step is claimed in the same statement that records the
// outcome, which saves the queue round trip and a claim. It is asked for each ready step in
// definition order; the first it accepts is claimed.
type Continue func(step *registry.Step, svc *registry.Service) bool

// Failure describes a step that an outcome failed for good (not retryable, or its attempts
// exhausted): the worker reports it to the queue, so the task shows as failed there too.
type Failure struct {
	Step    string
	Class   string // error class
	Message string
	Reason  string // "not retryable" or "N attempts exhausted"
}

// FinishAndContinue records the attempt's outcome and moves the DAG on; ErrFenced means the result
// came too late (the step was reclaimed, cancelled or finished by someone else) and was not recorded.
// When the step succeeded and cont accepts a step it made ready, it claims that step for the same
// worker in the same change and returns its attempt (nil otherwise). The continued attempt is like one claimed by StartAttempt: if the worker dies before
// it finishes, its lease expires and the step is re-run.
func (o *Orchestrator) FinishAndContinue(ctx context.Context, a *Attempt, out Outcome, cont Continue) (*Attempt, *Failure, error) {
	p := a.Payload
	fenced := false
	var (
		next   *Attempt
		failed *Failure
	)
	snap, err := o.withJobFrom(ctx, p.JobID, a.snap, func(u *unit) error {
		fenced, next, failed = false, nil, nil
		s := u.byName[p.Step]
		ended := out.endedAt(a.StartedAt, u.now)
		rec := &store.Attempt{
			JobID: p.JobID, Step: p.Step, Run: p.Run, Attempt: p.Attempt, WorkerID: a.WorkerID,
			StartedAt: a.StartedAt, FinishedAt: nowPtr(ended), HTTPStatus: out.HTTPStatus, ErrorClass: out.ErrorClass,
		}
		if out.Err != nil {
			rec.Error = out.Err.Error()
		}
		if !a.owns(s) {
			prev, err := u.attempt(p.Step, p.Run, p.Attempt)
			if err != nil {
				return err
			}
			switch {
			case prev != nil && prev.WorkerID == a.WorkerID && ownOutcome(prev.Status):
				// This very outcome was committed before, but the commit's answer was lost (the
				// connection dropped) and the caller retried: done, nothing to change.
				return nil
			case prev != nil && prev.Status != store.AttemptRunning:
				// The reaper or a cancel already closed this attempt's record: keep it.
				fenced = true
				return nil
			}
			// Fenced: keep the late attempt's record for the history, change nothing else.
			rec.Status = store.AttemptLost
			if u.job.Status == store.JobCancelled {
				rec.Status = store.AttemptCancelled
			}
			fenced = true
			u.recordAttempt(*rec)
			return nil
		}
		switch {
		case out.Err == nil:
			rec.Status = store.AttemptSucceeded
			s.Output = out.Output
			if len(s.Output) == 0 {
				s.Output = json.RawMessage("null")
			}
			s.Error, s.ErrorClass = "", ""
			u.setStep(s, store.StepSucceeded, "", "")
			s.FinishedAt = nowPtr(ended)
			queued := len(u.outbox)
			u.advance()
			if cont != nil {
				next = u.continueWith(queued, a.WorkerID, cont)
			}
		case out.Interrupted:
			rec.Status = store.AttemptInterrupted
			s.Lost++
			reason := "attempt interrupted"
			if out.Err != nil {
				reason += ": " + out.Err.Error()
			}
			u.enqueue(s, nil, "", reason)
		default:
			rec.Status = store.AttemptFailed
			msg := out.Err.Error()
			s.Error, s.ErrorClass = msg, out.ErrorClass
			failures := s.Attempts - s.Lost
			if out.Retryable && failures < a.Step.Retry.MaxAttempts {
				delay := backoff.Exponential(failures, a.Step.Retry.InitialBackoff, a.Step.Retry.MaxBackoff, o.cfg.Rand)
				if out.RetryAfter > delay {
					delay = out.RetryAfter
				}
				at := u.now.Add(delay)
				u.enqueue(s, &at, msg, fmt.Sprintf("retry in %s", delay.Round(time.Millisecond)))
			} else {
				reason := "not retryable"
				if out.Retryable {
					reason = fmt.Sprintf("%d attempts exhausted", failures)
				}
				u.setStep(s, store.StepFailed, msg, reason)
				s.FinishedAt = nowPtr(ended)
				failed = &Failure{Step: s.Name, Class: out.ErrorClass, Message: msg, Reason: reason}
				u.advance()
			}
		}
		u.recordAttempt(*rec)
		return nil
	})
	if err == nil && fenced {
		return nil, nil, ErrFenced
	}
	if err != nil {
		return nil, nil, err
	}
	if next != nil {
		next.snap = snap
	}
	return next, failed, nil
}

// continueWith claims for workerID the first step that advance queued (its tasks are u.outbox[from:])
// and that cont accepts: its task is dropped and the step goes straight to RUNNING.
func (u *unit) continueWith(from int, workerID string, cont Continue) *Attempt {
	if u.feature == nil || u.job.Status.Terminal() {
		return nil
	}
	for i := from; i < len(u.outbox); i++ {
		p, err := task.ParseStepPayload(u.outbox[i].Payload)
		if err != nil {
			continue
		}
		s := u.byName[p.Step]
		if s == nil || s.Status != store.StepQueued || !waitsFor(s, p) {
			continue
		}
		t, ok := u.o.target(p, u.job.FeatureName)
		if !ok || !cont(t.Step, t.Service) {
			continue
		}
		u.outbox = slices.Delete(u.outbox, i, i+1)
		outs := u.start(s, workerID)
		return &Attempt{Target: *t, WorkerID: workerID, StartedAt: u.now, Input: u.job.Input, Outputs: outs}
	}
	return nil
}

// ownOutcome reports whether an attempt status is one only FinishAndContinue writes for a live attempt.
func ownOutcome(status string) bool {
	return status == store.AttemptSucceeded || status == store.AttemptFailed || status == store.AttemptInterrupted
}

package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/webhook"
)

// unit is one change of one job: it stages step and job changes, the events that describe them, the
// attempt records and inputs they write and the tasks they imply. Applying it is one compare-and-set
// on the job's version (store.Apply), so a unit computed from a state that moved on is computed again.
type unit struct {
	ctx      context.Context
	o        *Orchestrator
	now      time.Time
	job      *store.Job
	feature  *registry.Feature // nil if the feature left the registry
	steps    []*store.Step
	byName   map[string]*store.Step
	expect   map[string]store.StepExpect // state of each step as read, for compare-and-set
	dirty    map[string]bool
	jobDirt  bool
	events   []store.Event
	outbox   []store.OutboxTask
	attempts []store.Attempt
	inputs   []store.JobInput
	illegal  error // the first illegal status move fn made (see moves.go)
	ended    bool  // fn made the job terminal: the change carries its completion webhook
	urgent   bool  // a slot waits for the change (store.Change.Urgent)
}

// maxApplyRuns bounds how often withJob computes a change again after it lost a race: many steps of
// one job finishing at the same moment each lose at most once per other finisher.
const maxApplyRuns = 50

// snapshot is a job and its steps as a committed change left them: a later change of the same job
// starts from it instead of reading the job again (and reads it only if it moved on meanwhile).
type snapshot struct {
	job   store.Job
	steps []store.Step
}

// withJob reads the job, runs fn on a unit over it and applies what fn staged as one change; when the
// job changed meanwhile it reads it again and runs fn again, so fn must only stage changes on the unit.
// After the change is committed it dispatches the tasks and publishes the events. fn may return an
// error to abandon the change.
func (o *Orchestrator) withJob(ctx context.Context, jobID string, fn func(u *unit) error) error {
	_, err := o.withJobFrom(ctx, jobID, nil, fn)
	return err
}

// withJobFrom is withJob starting from a snapshot when one is given; it returns the snapshot the
// committed change left (nil when fn staged nothing).
func (o *Orchestrator) withJobFrom(ctx context.Context, jobID string, from *snapshot, fn func(u *unit) error) (*snapshot, error) {
	for run := 1; ; run++ {
		var (
			job   *store.Job
			steps []store.Step
		)
		if from != nil {
			j := from.job
			job, steps = &j, slices.Clone(from.steps)
			from = nil
		} else {
			var err error
			job, steps, err = o.store.LoadJob(ctx, jobID)
			if errors.Is(err, store.ErrNotFound) {
				return nil, ErrJobNotFound
			}
			if err != nil {
				return nil, err
			}
		}
		u := o.newUnit(ctx, job, steps)
		if err := fn(u); err != nil {
			return nil, err
		}
		if u.illegal != nil {
			o.cfg.Logger.Error("change refused", "err", u.illegal)
			return nil, u.illegal
		}
		if !u.changed() {
			return nil, nil
		}
		err := o.store.Apply(ctx, u.change())
		if errors.Is(err, store.ErrConflict) && run < maxApplyRuns {
			if run > 3 {
				// Heavy contention on one job: let the others through.
				if err := sleepCtx(ctx, time.Duration(rand.N(run))*time.Millisecond); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		o.afterCommit(ctx, u)
		return u.snapshot(), nil
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (o *Orchestrator) newUnit(ctx context.Context, job *store.Job, steps []store.Step) *unit {
	u := &unit{
		ctx: ctx, o: o, now: o.now(), job: job,
		byName: make(map[string]*store.Step, len(steps)),
		expect: make(map[string]store.StepExpect, len(steps)),
		dirty:  map[string]bool{},
	}
	if f, ok := o.reg.Feature(job.FeatureName); ok {
		u.feature = f
	}
	for i := range steps {
		s := &steps[i]
		u.steps = append(u.steps, s)
		u.byName[s.Name] = s
		u.expect[s.Name] = s.Expect()
	}
	return u
}

// afterCommit hands the committed tasks to the queue at once (the outbox rows stay until they are
// in it, so a crash here loses nothing), publishes the committed events, then logs them and runs the
// hooks (observe), once per committed change.
func (o *Orchestrator) afterCommit(ctx context.Context, u *unit) {
	if len(u.outbox) > 0 && o.dispatch != nil {
		// Committed: dispatching must not be skipped because the request was cancelled.
		o.dispatch.Dispatch(context.WithoutCancel(ctx), o.carry(u))
	}
	o.publish(u.events)
	o.observe(ctx, u)
}

// changed reports whether the unit staged anything to write.
func (u *unit) changed() bool {
	return u.jobDirt || len(u.dirty) > 0 || len(u.events) > 0 || len(u.outbox) > 0 ||
		len(u.attempts) > 0 || len(u.inputs) > 0
}

// change numbers the staged events from the job's last seq and returns what the unit writes.
func (u *unit) change() *store.Change {
	for i := range u.events {
		u.job.LastSeq++
		u.events[i].Seq = u.job.LastSeq
	}
	if u.jobDirt || len(u.dirty) > 0 || len(u.events) > 0 {
		u.job.UpdatedAt = u.now // progress
	}
	c := &store.Change{
		Job: u.job, Version: u.job.Version, Attempts: u.attempts, Inputs: u.inputs, Events: u.events, Outbox: u.outbox,
		Urgent: u.urgent,
	}
	if u.ended && u.job.Status.Terminal() {
		// The payload is the job as this change leaves it.
		d, ok, err := webhook.For(u.job, u.now)
		if err != nil {
			u.o.cfg.Logger.Error("webhook payload", "job_id", u.job.ID, "err", err)
		} else if ok {
			c.Webhooks = []store.WebhookDelivery{d}
		}
	}
	for _, s := range u.steps {
		if u.dirty[s.Name] {
			s.UpdatedAt = u.now
			c.Steps = append(c.Steps, store.StepChange{Step: *s, Expect: u.expect[s.Name]})
		}
	}
	return c
}

// snapshot returns the job and steps as the applied change left them.
func (u *unit) snapshot() *snapshot {
	sn := &snapshot{job: *u.job, steps: make([]store.Step, len(u.steps))}
	for i, s := range u.steps {
		sn.steps[i] = *s
	}
	return sn
}

// recordAttempt stages an attempt record (inserted or replaced).
func (u *unit) recordAttempt(a store.Attempt) {
	a.JobID = u.job.ID
	u.attempts = append(u.attempts, a)
}

// stepEvent stages a step event for s's current status.
func (u *unit) stepEvent(s *store.Step, errMsg, reason string) {
	u.events = append(u.events, store.Event{
		JobID: u.job.ID, Type: store.EventStep, Step: s.Name, Status: string(s.Status),
		Attempt: s.Attempts, Run: s.Run, Error: errMsg, Reason: reason, At: u.now,
	})
}

// setStep changes a step's status and stages its event.
func (u *unit) setStep(s *store.Step, status store.StepStatus, errMsg, reason string) {
	if !legal(stepMoves, s.Status, status) {
		u.illegalStep(s, status)
	}
	s.Status = status
	u.dirty[s.Name] = true
	if u.job.StuckAt != nil {
		// Progress: the job is no longer stuck.
		u.job.StuckAt = nil
		u.job.StuckReason = ""
		u.jobDirt = true
	}
	if status.Terminal() {
		t := u.now
		s.FinishedAt = &t
		s.LeaseOwner, s.LeaseExpiresAt = "", nil
	}
	u.stepEvent(s, errMsg, reason)
}

// setJob changes the job's status and stages its event.
func (u *unit) setJob(status store.JobStatus, errMsg, reason string) {
	if !legal(jobMoves, u.job.Status, status) {
		u.illegalJob(status)
	}
	u.job.Status = status
	u.jobDirt = true
	switch {
	case status == store.JobRunning && u.job.StartedAt == nil:
		t := u.now
		u.job.StartedAt = &t
	case status.Terminal():
		t := u.now
		u.job.FinishedAt = &t
		u.job.StuckAt, u.job.StuckReason = nil, ""
		u.ended = true
	case status == store.JobPending:
		u.job.FinishedAt = nil
	}
	u.job.Error = errMsg
	u.events = append(u.events, store.Event{
		JobID: u.job.ID, Type: store.EventJob, Status: string(status), Error: errMsg, Reason: reason, At: u.now,
	})
}

// enqueue makes s QUEUED (or RETRYING when at is set) and stages the task for its next attempt.
func (u *unit) enqueue(s *store.Step, at *time.Time, errMsg, reason string) {
	s.LeaseOwner, s.LeaseExpiresAt = "", nil
	s.NextAttemptAt = at
	if at != nil {
		u.setStep(s, store.StepRetrying, errMsg, reason)
	} else {
		u.setStep(s, store.StepQueued, errMsg, reason)
	}
	u.outbox = append(u.outbox, task.ForStep(s, u.job.FeatureName, u.job.Tenant, u.now))
}

// redispatch stages the task of a waiting step again without changing its state (recovery paths:
// the deterministic task id makes a duplicate harmless).
func (u *unit) redispatch(s *store.Step) {
	u.outbox = append(u.outbox, task.ForStep(s, u.job.FeatureName, u.job.Tenant, u.now))
}

// advance moves the DAG forward after any change: it queues steps whose needs all succeeded, skips
// what can no longer run after a failure, and ends the job when nothing is left to do.
func (u *unit) advance() {
	if u.job.Status.Terminal() {
		return
	}
	var failed *store.Step
	running, succeeded := 0, 0
	for _, s := range u.steps {
		switch s.Status {
		case store.StepFailed:
			if failed == nil {
				failed = s
			}
		case store.StepRunning:
			running++
		case store.StepSucceeded:
			succeeded++
		default: // waiting or ended otherwise: nothing to count
		}
	}
	if failed != nil {
		for _, s := range u.steps {
			switch s.Status {
			case store.StepPending, store.StepQueued, store.StepRetrying:
				u.setStep(s, store.StepSkipped, "", fmt.Sprintf("step %s failed", failed.Name))
			default: // running steps finish and are recorded; ended ones stay as they are
			}
		}
		if running == 0 {
			u.setJob(store.JobFailed, fmt.Sprintf("step %s failed: %s", failed.Name, failed.Error), "")
		}
		return
	}
	if succeeded == len(u.steps) {
		u.job.Output = u.outputs()
		u.setJob(store.JobCompleted, "", "")
		return
	}
	for _, s := range u.steps {
		if s.Status != store.StepPending {
			continue
		}
		ready := true
		for _, n := range s.Needs {
			if dep := u.byName[n]; dep == nil || dep.Status != store.StepSucceeded {
				ready = false
				break
			}
		}
		if ready {
			u.enqueue(s, nil, "", "")
		}
	}
}

// outputs collects the outputs of the job's steps by name (the job's output when it completes).
func (u *unit) outputs() json.RawMessage {
	m := make(map[string]json.RawMessage, len(u.steps))
	for _, s := range u.steps {
		if len(s.Output) > 0 {
			m[s.Name] = s.Output
		} else {
			m[s.Name] = json.RawMessage("null")
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// attempt returns the stored record of one attempt of a step of this job, or nil.
func (u *unit) attempt(step string, run, attempt int) (*store.Attempt, error) {
	all, err := u.o.store.GetAttempts(u.ctx, u.job.ID)
	if err != nil {
		return nil, err
	}
	for i := range all {
		if a := &all[i]; a.Step == step && a.Run == run && a.Attempt == attempt {
			return a, nil
		}
	}
	return nil, nil
}

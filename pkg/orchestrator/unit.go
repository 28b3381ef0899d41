package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// unit is one transaction over one locked job: it stages step and job changes, the events that
// describe them and the tasks they imply, and writes them all before commit.
type unit struct {
	ctx     context.Context
	tx      store.Tx
	o       *Orchestrator
	now     time.Time
	job     *store.Job
	feature *registry.Feature // nil if the feature left the registry
	steps   []*store.Step
	byName  map[string]*store.Step
	expect  map[string]store.StepExpect // state of each step as read, for compare-and-set
	dirty   map[string]bool
	jobDirt bool
	events  []store.Event
	outbox  []store.OutboxTask
}

// withJob locks the job, runs fn on a unit and writes what fn staged, all in one transaction; after
// commit it publishes the events and wakes the relay.
func (o *Orchestrator) withJob(ctx context.Context, jobID string, fn func(u *unit) error) error {
	var committed *unit
	err := o.store.Tx(ctx, func(tx store.Tx) error {
		job, err := tx.LockJob(ctx, jobID)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return ErrJobNotFound
			}
			return err
		}
		steps, err := tx.GetSteps(ctx, jobID)
		if err != nil {
			return err
		}
		u := o.newUnit(ctx, tx, job, steps)
		if err := fn(u); err != nil {
			return err
		}
		if err := u.flush(); err != nil {
			return err
		}
		committed = u
		return nil
	})
	if err != nil {
		return err
	}
	o.afterCommit(ctx, committed)
	return nil
}

func (o *Orchestrator) newUnit(ctx context.Context, tx store.Tx, job *store.Job, steps []store.Step) *unit {
	u := &unit{
		ctx: ctx, tx: tx, o: o, now: o.now(), job: job,
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

func (o *Orchestrator) afterCommit(ctx context.Context, u *unit) {
	if u == nil {
		return
	}
	o.publish(ctx, u.events)
	if len(u.outbox) > 0 {
		o.notify()
	}
}

// flush writes the staged changes: steps (compare-and-set), events with consecutive seqs, outbox, job.
func (u *unit) flush() error {
	for _, s := range u.steps {
		if !u.dirty[s.Name] {
			continue
		}
		s.UpdatedAt = u.now
		if err := u.tx.UpdateStep(u.ctx, s, u.expect[s.Name]); err != nil {
			return fmt.Errorf("update step %s: %w", s.Name, err)
		}
	}
	if len(u.events) > 0 {
		for i := range u.events {
			u.job.LastSeq++
			u.events[i].Seq = u.job.LastSeq
		}
		if err := u.tx.AppendEvents(u.ctx, u.events); err != nil {
			return fmt.Errorf("append events: %w", err)
		}
		u.jobDirt = true
	}
	if len(u.outbox) > 0 {
		if err := u.tx.InsertOutbox(u.ctx, u.outbox); err != nil {
			return fmt.Errorf("insert outbox: %w", err)
		}
	}
	if u.jobDirt || len(u.dirty) > 0 {
		u.job.UpdatedAt = u.now
		if err := u.tx.UpdateJob(u.ctx, u.job); err != nil {
			return fmt.Errorf("update job: %w", err)
		}
	}
	return nil
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
	p := task.StepPayload{JobID: u.job.ID, Step: s.Name, Run: s.Run, Attempt: s.Attempts + 1}
	ot := store.OutboxTask{
		TaskID: p.TaskID(), Queue: s.Queue, TypeName: task.TypeStep, Payload: p.Marshal(), CreatedAt: u.now,
	}
	s.LeaseOwner, s.LeaseExpiresAt = "", nil
	if at != nil {
		ot.ProcessAt = at
		s.NextAttemptAt = at
		u.setStep(s, store.StepRetrying, errMsg, reason)
	} else {
		s.NextAttemptAt = nil
		u.setStep(s, store.StepQueued, errMsg, reason)
	}
	u.outbox = append(u.outbox, ot)
}

// redispatch stages the task of a waiting step again without changing its state (recovery paths:
// the deterministic task id makes a duplicate harmless).
func (u *unit) redispatch(s *store.Step) {
	p := task.StepPayload{JobID: u.job.ID, Step: s.Name, Run: s.Run, Attempt: s.Attempts + 1}
	ot := store.OutboxTask{
		TaskID: p.TaskID(), Queue: s.Queue, TypeName: task.TypeStep, Payload: p.Marshal(), CreatedAt: u.now,
	}
	if s.Status == store.StepRetrying && s.NextAttemptAt != nil && s.NextAttemptAt.After(u.now) {
		at := *s.NextAttemptAt
		ot.ProcessAt = &at
	}
	u.outbox = append(u.outbox, ot)
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
		}
	}
	if failed != nil {
		for _, s := range u.steps {
			switch s.Status {
			case store.StepPending, store.StepQueued, store.StepRetrying:
				u.setStep(s, store.StepSkipped, "", fmt.Sprintf("step %s failed", failed.Name))
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
	all, err := u.tx.GetAttempts(u.ctx, u.job.ID)
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

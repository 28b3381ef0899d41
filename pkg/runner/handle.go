package runner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"

	"github.com/cao-run/cao/pkg/backoff"
	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// busyError asks Asynq to try the task again after delay without counting a failure. A step whose
// service is saturated (park) waits in the service's fair queue instead of for a delay.
type busyError struct {
	service string
	delay   time.Duration
	why     string
	park    bool
	reason  string // what the step waits for (package waits), for its note
	// ready is when the step expects room, when it comes back earlier than that to wait the rest
	// in its worker (budgets); 0: at the delay.
	ready  time.Duration
	budget string // which budget it waits for, for its note (rate budgets)
}

func (e *busyError) Error() string {
	return fmt.Sprintf("service %s %s; retry in %s", e.service, e.why, e.delay)
}

func isFailure(err error) bool {
	var b *busyError
	return !errors.As(err, &b)
}

// retryDelay is Asynq's delay before retrying a task: the requested delay for busy services, and for
// infrastructure errors (database or Redis unreachable) 1s doubling to at most 30s, ±50%, so work
// resumes soon after an outage without hammering a recovering database.
func retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var b *busyError
	if errors.As(err, &b) {
		return b.delay
	}
	d := time.Second << min(n, 5)
	return backoff.Jitter(min(d, 30*time.Second), 0.5, rand.Float64)
}

// source names the task a step runs for: its id and queue in Asynq.
type source struct{ id, queue string }

// handle runs one step task that Asynq handed out. Returning nil acknowledges it; a busyError
// requeues it without counting a failure; other errors (database or Redis unreachable) let Asynq
// retry it later.
func (r *Runner) handle(ctx context.Context, t *asynq.Task) error {
	r.wg.Add(1) // held until the handler is freed (freeSlot may hand it to a deferred ring)
	defer r.wg.Done()
	if r.cfg.Hooks.OnTask != nil {
		r.cfg.Hooks.OnTask(ViaPoll)
	}
	src := source{}
	src.id, _ = asynq.GetTaskID(ctx)
	src.queue, _ = asynq.GetQueueName(ctx)
	if err := r.slots.acquire(ctx); err != nil {
		return err
	}
	defer r.freeSlot()
	return r.run(ctx, src, t)
}

// run runs the step of task t (from src), for Asynq (handle) or for the bell (serveRings): see
// handle. Both callers hold r.wg for it.
func (r *Runner) run(ctx context.Context, src source, t *asynq.Task) error {
	p, err := task.ParseStepPayload(t.Payload())
	if err != nil {
		r.cfg.Logger.Error("drop malformed step task", "err", err)
		return fmt.Errorf("%w: %w", asynq.SkipRetry, err)
	}
	if p.Failed != "" {
		return fmt.Errorf("%w: %s", asynq.SkipRetry, p.Failed) // see settleStolen
	}
	log := r.cfg.Logger.With("job_id", p.JobID, "step", p.Step, "run", p.Run, "attempt", p.Attempt)

	if r.admitCtx.Err() != nil {
		// Stop began after Asynq handed this task out: a step that has not started is not started
		// now. The task goes back to its queue for another worker, without using an attempt.
		return r.reschedule(ctx, src, t, p, nil, &busyError{service: "(any)", delay: backoff.Jitter(r.cfg.BusyDelay, 0.5, rand.Float64), why: "is not called: the worker is stopping"})
	}
	target, err := r.orch.Resolve(ctx, p)
	if errors.Is(err, orchestrator.ErrStale) {
		log.Debug("stale step task acknowledged", "reason", err)
		return nil
	}
	if err != nil {
		return err
	}
	svc := target.Service

	// Waiting for the service ends when the task's context does or as soon as Stop begins: a step
	// that has not started has nothing to finish.
	admitCtx, stopAdmit := context.WithCancelCause(ctx)
	stopWait := context.AfterFunc(r.admitCtx, func() { stopAdmit(context.Cause(r.admitCtx)) })
	var pre preread
	adm, err := r.admit(admitCtx, target, &pre)
	stopWait()
	stopAdmit(nil)
	var busy *busyError
	if errors.As(err, &busy) {
		if busy.park {
			return r.park(ctx, src, t, p, svc, busy)
		}
		return r.reschedule(ctx, src, t, p, svc, busy)
	}
	if errors.Is(err, orchestrator.ErrStale) {
		log.Debug("stale step task acknowledged", "reason", err)
		return nil
	}
	if err != nil {
		return err
	}
	if p.Since != 0 || adm.noted {
		// Once the slot is given back (deferred before release, so run after it): off the path
		// from the slot to the call. The note is shown for QUEUED steps only, and this one starts.
		defer r.parker.Admitted(context.WithoutCancel(ctx), svc, p)
	}
	// The slot is held from before the claim until the call's answer is in: a service never has more
	// than max_concurrency calls in flight. It is given back before the outcome is recorded, so the
	// next waiter's call does not wait for this step's commit (docs/architecture.md, "Slots").
	held := true
	release := func() {
		if held {
			held = false
			r.releaseAll(ctx, svc, &adm)
		}
	}
	defer release()

	stepAt := r.cfg.Now() // the step's lease counts from no later than this
	a, err := r.orch.StartAttemptFrom(ctx, target, r.cfg.WorkerID,
		orchestrator.Claim{From: pre.take(ctx), Holding: len(adm.leases()) > 0})
	if errors.Is(err, orchestrator.ErrStale) {
		return nil
	}
	if err != nil {
		return err
	}
	clock := newLeaseClock(stepAt, r.orch.Config().StepLeaseTTL, adm.leases(), svc.LeaseTTL)
	for continued := false; ; continued = true {
		var (
			out orchestrator.Outcome
			dur time.Duration
		)
		if continued && r.admitCtx.Err() != nil {
			// Stopping: a step claimed by continuation has not started; put it back.
			out = orchestrator.Outcome{Err: errShutdown, ErrorClass: "interrupted", Interrupted: true}
		} else {
			out, dur = r.execute(ctx, a, &adm, clock)
		}
		release()
		// Record even if the task's context ended: the outcome is what matters now. A step this
		// records as ready may be claimed for this handler in the same statement (continued).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		recordAt := r.cfg.Now() // a continued step's lease counts from no later than this
		next, failed, err := r.finish(rctx, a, out)
		cancel()
		if r.cfg.Hooks.OnAttempt != nil {
			r.cfg.Hooks.OnAttempt(a.Service.Name, out, dur)
		}
		switch {
		case errors.Is(err, orchestrator.ErrFenced):
			log.Info("late result rejected: the attempt no longer owns the step")
			return nil
		case err != nil:
			// The database did not take the result; the step's lease will expire and it is re-run in
			// the same run (same Idempotency-Key), so nothing is lost.
			log.Error("record outcome", "err", err)
			return nil
		case failed != nil:
			// The step failed for good: the task fails too, so the queue's failed count and
			// archive show it with its error (SkipRetry archives at once; nothing retries it).
			return fmt.Errorf("%w: step %s failed (%s, %s): %s", asynq.SkipRetry, failed.Step, failed.Class, failed.Reason, failed.Message)
		case next == nil:
			return nil
		}
		// Continued: the next step's service takes no slot or budget (see continueWith).
		a, adm = next, admission{}
		clock = newLeaseClock(recordAt, r.orch.Config().StepLeaseTTL, nil, 0)
		log = r.cfg.Logger.With("job_id", a.Payload.JobID, "step", a.Payload.Step, "run", a.Payload.Run, "attempt", a.Payload.Attempt)
	}
}

// continues reports whether this worker runs step st of service svc right after the step it
// finished, instead of queueing it: only when the step needs no slot, budget or key slot and its
// service is not on hold (admission would otherwise have to wait with the step already claimed),
// this worker serves the step's queue, and the worker is not stopping.
func (r *Runner) continues(st *registry.Step, svc *registry.Service) bool {
	if svc.MaxConcurrency > 0 || limited(st, svc) || r.admitCtx.Err() != nil {
		return false
	}
	if _, ok := r.cfg.Queues[st.Queue]; !ok {
		return false
	}
	return !r.heldNow(svc)
}

// finish records the outcome, retrying while the database is unreachable (until ctx ends): a result
// that is not recorded makes the step run again after its lease expires.
func (r *Runner) finish(ctx context.Context, a *orchestrator.Attempt, out orchestrator.Outcome) (*orchestrator.Attempt, *orchestrator.Failure, error) {
	wait := 200 * time.Millisecond
	for {
		next, failed, err := r.orch.FinishAndContinue(ctx, a, out, r.continues)
		if err == nil || errors.Is(err, orchestrator.ErrFenced) || !errors.Is(err, store.ErrUnavailable) {
			return next, failed, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, err
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// parkBusy is the busyError of a step that must wait in its service's fair queue, for reason.
func (r *Runner) parkBusy(service, reason, why string) error {
	if r.cfg.Hooks.OnBusy != nil {
		r.cfg.Hooks.OnBusy(service)
	}
	return &busyError{service: service, delay: backoff.Jitter(r.cfg.BusyDelay, 0.5, rand.Float64), why: why, park: true, reason: reason}
}

// waitBusy is busy for a step that waits for reason (package waits) for about wait.
func (r *Runner) waitBusy(service, reason, why string, wait time.Duration) error {
	err := r.busy(service, why, wait)
	var b *busyError
	if errors.As(err, &b) {
		b.reason = reason
	}
	return err
}

func (r *Runner) busy(service, why string, wait time.Duration) error {
	if r.cfg.Hooks.OnBusy != nil {
		r.cfg.Hooks.OnBusy(service)
	}
	d := backoff.Jitter(r.cfg.BusyDelay, 0.5, rand.Float64)
	if wait > d {
		d = wait + backoff.Jitter(100*time.Millisecond, 1, rand.Float64)
	}
	return &busyError{service: service, delay: d, why: why}
}

// reschedule puts a step that cannot start now (its service is full or out of budget, or the worker
// is stopping) back as a scheduled copy of its task, due after the busy delay, and acknowledges the
// task it holds: in Asynq (and asynqmon) a waiting step is scheduled, never a retry with an error.
// The step stays QUEUED in the database, so if the copy is lost the reconciler enqueues the task
// again. When the copy cannot be enqueued, the task is retried by Asynq instead (not a failure).
func (r *Runner) reschedule(ctx context.Context, src source, t *asynq.Task, p task.StepPayload, svc *registry.Service, b *busyError) error {
	id, queue := src.id, src.queue
	if id == "" || queue == "" {
		return b
	}
	now := r.cfg.Now()
	if p.Since == 0 && b.reason != "" {
		p.Since = now.UnixMicro()
	}
	at := now.Add(b.delay)
	err := dispatch.Enqueue(context.WithoutCancel(ctx), r.queue, store.OutboxTask{
		TaskID: dispatch.WaitCopyID(id), Queue: queue, TypeName: t.Type(), Payload: p.Marshal(), ProcessAt: &at,
	})
	if err != nil {
		r.cfg.Logger.Warn("could not schedule a waiting step; Asynq retries it", "task_id", id, "err", err)
		return b
	}
	if b.reason != "" {
		until := at
		if b.ready > 0 {
			until = now.Add(b.ready)
		}
		r.parker.Note(context.WithoutCancel(ctx), svc, p, b.reason, until, b.budget)
	}
	return nil
}

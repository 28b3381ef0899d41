package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/task"
)

// execute calls the service while keeping the step's leases alive (its step lease and the semaphore
// leases of its admission: the service slot, the slots within the service, its key's); losing any
// cancels the call. adm is the step's admission: its budgets are told when the call leaves and what
// it cost, and the AIMD generation its slot was granted in goes with what the answer says about the
// service's limits, reported before execute returns.
func (r *Runner) execute(ctx context.Context, a *orchestrator.Attempt, adm *admission, clock *leaseClock) (orchestrator.Outcome, time.Duration) {
	if adm.fail != nil {
		// A template the step's limits need could not be rendered: the step fails without a call.
		return orchestrator.Outcome{Err: adm.fail, ErrorClass: caller.ClassTemplate}, 0
	}
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopMerge := context.AfterFunc(r.runCtx, func() { cancel(context.Cause(r.runCtx)) })
	defer stopMerge()
	untrack := r.track(a.Payload.JobID, &running{cancel: cancel})
	defer untrack()

	hbDone := make(chan struct{})
	hbStopped := make(chan struct{})
	leases := adm.leases() // read here: execute writes adm while the heartbeat runs
	go func() {
		defer close(hbStopped)
		r.heartbeat(callCtx, a, leases, clock, cancel, hbDone)
	}()
	defer func() { close(hbDone); <-hbStopped }()

	data := templateData(a)
	// The budgets were taken before the attempt was recorded, which takes a variable time: space
	// this call from the others by when it leaves, not by when it was admitted.
	if err := r.rate.Sent(callCtx, adm.grant); err != nil {
		r.cfg.Logger.Warn("budgets: record send time", "service", a.Service.Name, "err", err)
	}
	// The process may have been stopped (SIGSTOP, VM freeze) since it took its leases, and the
	// heartbeat may not have noticed yet: never send on a lease that may belong to someone else now.
	if !clock.valid(r.cfg.Now()) {
		err := fmt.Errorf("%w: lease expired before the call was sent", limiter.ErrLeaseLost)
		return orchestrator.Outcome{Err: err, ErrorClass: "lease_lost", Interrupted: true}, 0
	}
	adm.sent = true
	start := r.cfg.Now()
	res, err := r.caller.Call(callCtx, caller.Call{
		JobID: a.Payload.JobID, Step: a.Step, Service: a.Service, Run: a.Payload.Run, Attempt: a.Payload.Attempt,
		IdempotencyKey: task.IdempotencyKey(a.Payload.JobID, a.Payload.Step, a.Payload.Run), Data: data,
	})
	answered := r.cfg.Now()
	dur := answered.Sub(start)
	r.settle(ctx, a, adm, data, res, err)
	r.observe(ctx, a.Service, res, err, adm.gen)
	if err == nil {
		return orchestrator.Outcome{Output: res.Output, HTTPStatus: res.HTTPStatus, At: answered}, dur
	}
	out := orchestrator.Outcome{Err: err, ErrorClass: "internal", At: answered}
	var ce *caller.Error
	if errors.As(err, &ce) {
		out.ErrorClass, out.Retryable, out.RetryAfter, out.HTTPStatus = ce.Class, ce.Retryable, ce.RetryAfter, ce.HTTPStatus
	}
	if cause := context.Cause(callCtx); callCtx.Err() != nil &&
		(errors.Is(cause, errShutdown) || errors.Is(cause, limiter.ErrLeaseLost)) {
		// Abandoned by this worker (shutdown, or a lease it could not keep: the step was reclaimed,
		// Redis lost the service slot, the database was unreachable past the lease) rather than failed
		// by the service: put the step back without using an attempt. A reclaimed step fences it.
		out.Interrupted = true
	}
	return out, dur
}

// heartbeat renews the step's database lease and the semaphore leases (the service slot, and the
// slots within the service) about every third of their TTLs; if any is lost (or cannot be renewed
// before it expires) the call is cancelled.
func (r *Runner) heartbeat(ctx context.Context, a *orchestrator.Attempt, leases []limiter.Lease, clock *leaseClock, cancel context.CancelCauseFunc, done <-chan struct{}) {
	stepTTL, semTTL := clock.stepTTL, clock.semTTL
	interval := stepTTL / 3
	if clock.sem {
		interval = min(interval, semTTL/3)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := r.cfg.Now()
		// A process that was stopped (SIGSTOP, GC pause, VM freeze) must not act on a lease that may
		// already belong to someone else: give up before sending anything more.
		if !clock.valid(now) {
			cancel(fmt.Errorf("%w: lease expired before it could be renewed", limiter.ErrLeaseLost))
			return
		}
		hctx, hcancel := context.WithTimeout(ctx, interval)
		err := r.orch.Heartbeat(hctx, a)
		hcancel()
		switch {
		case errors.Is(err, orchestrator.ErrFenced):
			cancel(fmt.Errorf("%w: step reclaimed or cancelled", limiter.ErrLeaseLost))
			return
		case err == nil:
			clock.renewed(now, false)
		}
		if len(leases) > 0 {
			renewedAll := true
			hctx, hcancel := context.WithTimeout(ctx, interval)
			for i, l := range leases {
				nl, err := r.sem.Renew(hctx, l, semTTL)
				switch {
				case errors.Is(err, limiter.ErrLeaseLost):
					hcancel()
					cancel(fmt.Errorf("%w: service slot %s lost", limiter.ErrLeaseLost, l.Name))
					return
				case err == nil:
					leases[i] = nl
				default:
					renewedAll = false
				}
			}
			hcancel()
			if renewedAll {
				clock.renewed(now, true)
			}
		}
	}
}

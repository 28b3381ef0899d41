package runner

import (
	"context"
	"errors"
	"time"

	"github.com/cao-run/cao/pkg/fairness"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/waits"
)

// DefaultMaxRateWait is Config.MaxRateWait's default.
const DefaultMaxRateWait = 2 * time.Second

// rateSlack widens every rate window by this much when admitting a call. The budget counts a call
// from just before it leaves (Budgets.Sent), but it reaches the service a little later, by a
// delay that varies from call to call; without slack, two calls a window apart by the limiter's
// clock could arrive less than a window apart.
const rateSlack = 50 * time.Millisecond

// Reasons of Hooks.OnWait: what a step waited for in its worker before its call could be sent.
const (
	WaitSlot       = "slot"        // a slot of the service's fleet-wide semaphore (max_concurrency)
	WaitRateBudget = "rate_budget" // room in every budget of the service (rate_limit, rate_limits)
)

// admission is a step's admission to its service: the service slot (a zero-token lease when the
// service has no max_concurrency), the slots within the service and its reservation in the
// service's budgets (zero without budgets).
type admission struct {
	lease limiter.Lease
	// extra are the leases of the semaphores within the service the step also holds (its tenant's
	// share, max_concurrency_per_tenant; its key value's, concurrency_key), renewed and given back
	// with lease.
	extra []limiter.Lease
	grant limiter.Grant // settled from the answer, or given back if the call never leaves
	gen   int64         // the AIMD generation the slot was granted in (adaptive services)
	// noted is set when the step waited in the wait room and has a note saying so (package waits).
	noted bool
	// fail is set when a template the step's limits need cannot be rendered: the step is claimed and
	// fails with it, without a call (as a request that cannot be rendered does).
	fail error
	sent bool // the call left: its budgets are settled, never given back
}

// leases returns every semaphore lease of the admission that is held (non-zero token).
func (a admission) leases() []limiter.Lease {
	out := make([]limiter.Lease, 0, 1+len(a.extra))
	if a.lease.Token != 0 {
		out = append(out, a.lease)
	}
	for _, l := range a.extra {
		if l.Token != 0 {
			out = append(out, l)
		}
	}
	return out
}

// admit waits for the service to have room for one more call of the step of t: a slot of its key
// value when it has a concurrency_key (first, and while it waits it holds nothing), its tenant's
// share of the service (max_concurrency_per_tenant), a slot of its fleet-wide semaphore (queued FIFO
// in the wait room, woken the moment a slot frees) and, when it has budgets, room in every one of
// them. A short wait for the budgets happens here, without holding a slot; a longer one returns a
// busyError so the task goes back to its queue without using an attempt, and a full wait room (or a
// tenant share in use) one that parks the step in the service's fair queue. Waiting ends when ctx
// does (the task's own context, or the runner stopping). Once admitted, the time waited for each is
// reported to Hooks.OnWait. ErrStale means the task no longer matches its step (found when the
// limits need the step's data). A step that waits in the wait room starts pre, the read of its job.
func (r *Runner) admit(ctx context.Context, t *orchestrator.Target, pre *preread) (admission, error) {
	svc, p := t.Service, t.Payload
	pl, err := r.plan(ctx, t)
	if err != nil {
		return admission{}, err
	}
	if pl.fail != nil {
		// Not an admission error: the step is claimed and fails with it, without a call.
		return admission{fail: pl.fail}, nil //nolint:nilerr // see above
	}
	start := r.cfg.Now()
	var keyWait, slotWait, holdWait time.Duration // the rest of the time is spent on the budgets
	for {
		t0 := r.cfg.Now()
		key, err := r.acquireKey(ctx, svc, pl)
		keyWait += r.cfg.Now().Sub(t0)
		if err != nil {
			return admission{}, err
		}
		share, err := r.tenantShare(ctx, svc, p)
		if err != nil {
			r.releaseLease(ctx, key)
			return admission{}, err
		}
		t0 = r.cfg.Now()
		var noted bool
		lease, gen, held, err := r.acquireSlot(ctx, svc, p, &noted, func(ctx context.Context) { pre.start(ctx, r, t) })
		slotWait += r.cfg.Now().Sub(t0) - held
		holdWait += held
		if err != nil {
			r.releaseLease(ctx, share)
			r.releaseLease(ctx, key)
		}
		switch {
		case errors.Is(err, limiter.ErrFull) || errors.Is(err, errPark):
			return admission{}, r.parkBusy(svc.Name, waits.Slot, "is at max_concurrency")
		case err != nil && ctx.Err() != nil:
			return admission{}, r.busy(svc.Name, "was still at max_concurrency when the wait ended", 0)
		case err != nil:
			return admission{}, err
		}
		a := admission{lease: lease, gen: gen, noted: noted}
		for _, l := range []limiter.Lease{share, key} {
			if l.Token != 0 {
				a.extra = append(a.extra, l)
			}
		}
		grant, denial, err := r.rate.Reserve(ctx, svc.Name, pl.asks)
		if err == nil && denial == nil {
			a.grant = grant
			if err := r.freshen(ctx, svc, &a); err != nil {
				r.releaseAll(ctx, svc, &a)
				if errors.Is(err, limiter.ErrLeaseLost) {
					continue // the waits outlasted a lease taken before them: take it again
				}
				return admission{}, err
			}
			r.waited(t, keyWait, slotWait, r.cfg.Now().Sub(start)-keyWait-slotWait-holdWait, holdWait)
			return a, nil
		}
		r.releaseAll(ctx, svc, &a)
		if err != nil {
			return admission{}, err
		}
		wait := denial.Wait
		if wait > r.cfg.MaxRateWait {
			return admission{}, r.budgetBusy(svc, denial)
		}
		if r.cfg.Hooks.OnBusy != nil {
			r.cfg.Hooks.OnBusy(svc.Name)
		}
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return admission{}, r.waitBusy(svc.Name, waits.Rate, "is out of rate budget", wait)
		case <-tm.C:
		}
	}
}

// budgetBusy is the busyError of a step whose budgets have room only after denial.Wait: it goes
// back to its queue until a little before then (budgetRetry), its note saying when the room frees.
func (r *Runner) budgetBusy(svc *registry.Service, denial *limiter.Denial) error {
	why, label := "is out of rate budget", ""
	if denial.Budget >= 0 && denial.Budget < len(svc.RateLimits) {
		b := svc.RateLimits[denial.Budget]
		why += " (" + b.Path + ")"
		label = b.Label()
	}
	err := r.waitBusy(svc.Name, waits.Rate, why, r.budgetRetry(denial.Wait))
	var b *busyError
	if errors.As(err, &b) {
		b.ready, b.budget = denial.Wait, label
	}
	return err
}

// budgetRetry is how long a step whose budgets have room only after wait stays back in its queue:
// long enough not to come back for nothing, short enough that Asynq's schedule (whole seconds,
// rounded up, then forwarded every PollInterval) cannot make it late. It comes back a little before
// the room frees and waits the rest in its worker (up to MaxRateWait), so it leaves at once.
func (r *Runner) budgetRetry(wait time.Duration) time.Duration {
	return max(wait-time.Second-r.cfg.PollInterval, wait/2)
}

// waited reports how long an admitted step waited for its key, its service's slot and budgets, for
// each limit the step has, and for its service's hold when it waited for one.
func (r *Runner) waited(t *orchestrator.Target, key, slot, rate, hold time.Duration) {
	if r.cfg.Hooks.OnWait == nil {
		return
	}
	svc := t.Service
	if hold > 0 {
		r.cfg.Hooks.OnWait(svc.Name, WaitBudgetHold, hold)
	}
	if t.Step != nil && t.Step.KeyLimit != nil {
		r.cfg.Hooks.OnWait(svc.Name, WaitKey, key)
	}
	if svc.MaxConcurrency > 0 {
		r.cfg.Hooks.OnWait(svc.Name, WaitSlot, slot)
	}
	if len(svc.RateLimits) > 0 {
		r.cfg.Hooks.OnWait(svc.Name, WaitRateBudget, rate)
	}
}

// maxWaiters is how many of this process's handlers may wait for a slot of svc at once: enough to
// take every slot the moment it frees, but never so many that one saturated service ties up the
// handlers other services need. The rest go back to their queue and come again.
func (r *Runner) maxWaiters(svc *registry.Service) int {
	return max(1, min(svc.MaxConcurrency, r.cfg.Concurrency/2))
}

// tenantShare takes a slot of step p's tenant's share of svc when the service caps it
// (max_concurrency_per_tenant), without waiting: a tenant whose share is in use parks its step, and
// the fair queue passes it over until a slot of its share frees. A zero lease without a cap.
func (r *Runner) tenantShare(ctx context.Context, svc *registry.Service, p task.StepPayload) (limiter.Lease, error) {
	if svc.MaxConcurrencyPerTenant <= 0 {
		return limiter.Lease{}, nil
	}
	l, err := r.sem.Acquire(ctx, limiter.TenantSemaphore(svc.Name, fairness.Tenant(p)), svc.MaxConcurrencyPerTenant, svc.LeaseTTL, "")
	if errors.Is(err, limiter.ErrFull) {
		return l, r.parkBusy(svc.Name, waits.TenantSlot, "has max_concurrency_per_tenant calls of this tenant in flight")
	}
	return l, err
}

// releaseAll gives an admission's slots back (the semaphore wakes the next waiter of the fleet) and
// hands out the service's next parked step, whose turn in the fair queue has come; the budgets of a
// call that never left are given back too.
func (r *Runner) releaseAll(ctx context.Context, svc *registry.Service, a *admission) {
	r.cancelUnsent(ctx, a)
	held := a.leases()
	if len(held) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, l := range held {
		r.releaseLease(rctx, l)
	}
	if svc.MaxConcurrency > 0 {
		r.parker.Unpark(rctx, svc, 1)
	}
}

// releaseLease gives one slot back.
func (r *Runner) releaseLease(ctx context.Context, lease limiter.Lease) {
	if lease.Token == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.sem.Release(rctx, lease); err != nil && !errors.Is(err, limiter.ErrLeaseLost) {
		r.cfg.Logger.Warn("release slot", "semaphore", lease.Name, "err", err)
	}
}

package runner

import (
	"context"
	"errors"
	"time"

	"github.com/cao-run/cao/pkg/fairness"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/waits"
)

// DefaultMaxRateWait is Config.MaxRateWait's default.
const DefaultMaxRateWait = 2 * time.Second

// rateSlack widens every rate window by this much when admitting a call. The budget counts a call
// from just before it leaves (RateLimiter.Sent), but it reaches the service a little later, by a
// delay that varies from call to call; without slack, two calls a window apart by the limiter's
// clock could arrive less than a window apart.
const rateSlack = 50 * time.Millisecond

// Reasons of Hooks.OnWait: what a step waited for in its worker before its call could be sent.
const (
	WaitSlot       = "slot"        // a slot of the service's fleet-wide semaphore (max_concurrency)
	WaitRateBudget = "rate_budget" // a request of the service's rate_limit budget
)

// admission is a step's admission to its service: the service slot (a zero-token lease when the
// service has no max_concurrency) and the rate limit reservation (zero without a rate_limit).
type admission struct {
	lease limiter.Lease
	// extra are the leases of the semaphores within the service the step also holds (its tenant's
	// share, max_concurrency_per_tenant), renewed and given back with lease.
	extra []limiter.Lease
	rsv   limiter.Reservation
	gen   int64 // the AIMD generation the slot was granted in (adaptive services)
	// noted is set when the step waited in the wait room and has a note saying so (package waits).
	noted bool
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

// admit waits for the service to have room for one more call of step p: its tenant's share of the
// service (max_concurrency_per_tenant), a slot of its fleet-wide semaphore (queued FIFO in the wait
// room, woken the moment a slot frees) and, when it has a rate limit, a request of its budget. A
// short wait for the budget happens here, without holding a slot; a longer one returns a busyError
// so the task goes back to its queue without using an attempt, and a full wait room (or a tenant
// share in use) one that parks the step in the service's fair queue. Waiting ends when ctx does (the
// task's own context, or the runner stopping). Once admitted, the time waited for each is reported
// to Hooks.OnWait.
func (r *Runner) admit(ctx context.Context, svc *registry.Service, p task.StepPayload) (admission, error) {
	start := r.cfg.Now()
	var slotWait, holdWait time.Duration // the rest of the time is spent on the rate budget
	for {
		share, err := r.tenantShare(ctx, svc, p)
		if err != nil {
			return admission{}, err
		}
		t0 := r.cfg.Now()
		var noted bool
		lease, gen, held, err := r.acquireSlot(ctx, svc, p, &noted)
		slotWait += r.cfg.Now().Sub(t0) - held
		holdWait += held
		if err != nil {
			r.releaseLease(ctx, share)
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
		if share.Token != 0 {
			a.extra = append(a.extra, share)
		}
		rl := svc.RateLimit
		if rl == nil {
			r.waited(svc, slotWait, 0, holdWait)
			return a, nil
		}
		rsv, ok, wait, err := r.rate.Reserve(ctx, svc.Name, rl.Requests, rl.Per+rateSlack)
		if err == nil && ok {
			a.rsv = rsv
			r.waited(svc, slotWait, r.cfg.Now().Sub(start)-slotWait-holdWait, holdWait)
			return a, nil
		}
		r.releaseAll(ctx, svc, a)
		if err != nil {
			return admission{}, err
		}
		if wait > r.cfg.MaxRateWait {
			return admission{}, r.waitBusy(svc.Name, waits.Rate, "is out of rate budget", wait)
		}
		if r.cfg.Hooks.OnBusy != nil {
			r.cfg.Hooks.OnBusy(svc.Name)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return admission{}, r.waitBusy(svc.Name, waits.Rate, "is out of rate budget", wait)
		case <-t.C:
		}
	}
}

// waited reports how long an admitted step waited for its service's slot and rate budget, for each
// limit the service has, and for its hold when it waited for one.
func (r *Runner) waited(svc *registry.Service, slot, rate, hold time.Duration) {
	if r.cfg.Hooks.OnWait == nil {
		return
	}
	if hold > 0 {
		r.cfg.Hooks.OnWait(svc.Name, WaitBudgetHold, hold)
	}
	if svc.MaxConcurrency > 0 {
		r.cfg.Hooks.OnWait(svc.Name, WaitSlot, slot)
	}
	if svc.RateLimit != nil {
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
// hands out the service's next parked step, whose turn in the fair queue has come.
func (r *Runner) releaseAll(ctx context.Context, svc *registry.Service, a admission) {
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
		r.cfg.Logger.Warn("release service slot", "service", lease.Name, "err", err)
	}
}

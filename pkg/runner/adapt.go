package runner

// This file is the worker's side of the limits that adapt to a service's answers (package limiter,
// Adaptive): before a call it waits out the service's hold and takes its slot under the effective
// (AIMD) limit; after the call it reports what the answer said.

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/waits"
)

// WaitBudgetHold is the reason of Hooks.OnWait for the time a step waited in its worker for its
// service's hold to end (the provider said its budget was spent); reported only when it waited.
const WaitBudgetHold = "budget_hold"

// errHeld ends a wait for a slot when the service goes on hold meanwhile: the step waits out the
// hold first.
var errHeld = errors.New("service on hold")

// adaptTimeout bounds the Redis calls that report an answer.
const adaptTimeout = 2 * time.Second

// adapts reports whether svc has limits that follow its answers: a hold (budget_headers) or an
// adaptive limit.
func adapts(svc *registry.Service) bool {
	return svc.BudgetHeaders || (svc.Adaptive != nil && svc.MaxConcurrency > 0)
}

// aimdOf returns the AIMD shape of an adaptive service, nil for others.
func aimdOf(svc *registry.Service) *limiter.AIMD {
	if svc.Adaptive == nil || svc.MaxConcurrency <= 0 {
		return nil
	}
	return &limiter.AIMD{Max: svc.MaxConcurrency, Min: svc.Adaptive.Min}
}

// acquireSlot takes a slot of svc's fleet-wide semaphore once the service is not on hold, under its
// effective limit. A hold shorter than MaxRateWait is waited out in this worker, without a slot and
// without using an attempt; a longer one returns a busyError, so the step goes back to its queue
// until the hold ends. A hold that starts while the step waits for a slot is waited out the same
// way. It returns the lease, the AIMD generation the slot was granted in and how long the step
// waited for holds.
func (r *Runner) acquireSlot(ctx context.Context, svc *registry.Service, p task.StepPayload, noted *bool, entered func(context.Context)) (limiter.Lease, int64, time.Duration, error) {
	opts := limiter.WaitOptions{Enter: r.enterRoom(svc, p, noted, entered), NoLobby: true}
	if !adapts(svc) {
		lease, err := r.room.AcquireWith(ctx, svc.Name, svc.MaxConcurrency, svc.LeaseTTL, r.maxWaiters(svc), opts)
		return lease, 0, 0, err
	}
	aimd := aimdOf(svc)
	var held time.Duration
	for {
		st, err := r.adapt.State(ctx, svc.Name, aimd)
		if err != nil {
			return limiter.Lease{}, 0, held, err
		}
		if st.Hold > 0 {
			if st.Hold > r.cfg.MaxRateWait {
				return limiter.Lease{}, 0, held, r.waitBusy(svc.Name, waits.Hold, "is on hold until the provider's budget resets", st.Hold)
			}
			t0 := r.cfg.Now()
			t := time.NewTimer(st.Hold)
			select {
			case <-ctx.Done():
				t.Stop()
				return limiter.Lease{}, 0, held, r.waitBusy(svc.Name, waits.Hold, "was still on hold when the wait ended", st.Hold)
			case <-t.C:
			}
			held += r.cfg.Now().Sub(t0)
			continue
		}
		limit, gen := svc.MaxConcurrency, st.Gen
		if aimd != nil {
			limit = st.Limit
		}
		next := func(ctx context.Context) (int, error) {
			st, err := r.adapt.State(ctx, svc.Name, aimd)
			switch {
			case err != nil:
				return 0, err
			case st.Hold > 0:
				return 0, errHeld
			case aimd == nil:
				return svc.MaxConcurrency, nil
			}
			gen = st.Gen
			return st.Limit, nil
		}
		opts.Next, opts.FixedLimit = next, aimd == nil
		lease, err := r.room.AcquireWith(ctx, svc.Name, limit, svc.LeaseTTL, r.maxWaiters(svc), opts)
		if errors.Is(err, errHeld) {
			continue
		}
		return lease, gen, held, err
	}
}

// heldNow reports whether svc is on hold now (or its state cannot be read): a step of it is then not
// continued by the worker that finished its upstream step, it goes through admission.
func (r *Runner) heldNow(svc *registry.Service) bool {
	if !svc.BudgetHeaders {
		return false
	}
	base := r.runCtx
	if base == nil {
		base = context.Background()
	}
	ctx, cancel := context.WithTimeout(base, adaptTimeout)
	defer cancel()
	st, err := r.adapt.State(ctx, svc.Name, nil)
	return err != nil || st.Hold > 0
}

// observe reports what a call's answer said about the service's limits: a spent budget, or a 429 or
// 503 answer with Retry-After (res.Budget, for services with budget_headers), puts the service on
// hold for every worker until it resets; for an adaptive service, a 429, a 503 or a timeout halves
// the effective limit (once per generation: gen is the one the call was admitted in) and a success
// counts toward growing it.
func (r *Runner) observe(ctx context.Context, svc *registry.Service, res caller.Result, err error, gen int64) {
	aimd := aimdOf(svc)
	if !svc.BudgetHeaders && aimd == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), adaptTimeout)
	defer cancel()
	var ce *caller.Error
	if err != nil && !errors.As(err, &ce) {
		return
	}
	overloaded := ce != nil && (ce.HTTPStatus == http.StatusTooManyRequests || ce.HTTPStatus == http.StatusServiceUnavailable)
	if b := res.Budget; b != nil && svc.BudgetHeaders {
		hold, reason := b.Hold, spentBudget(b)
		if b.RetryAfter > hold {
			hold, reason = b.RetryAfter, "retry_after"
		}
		if hold > 0 {
			_, set, herr := r.adapt.Hold(ctx, svc.Name, hold, reason)
			switch {
			case herr != nil:
				r.cfg.Logger.Warn("record service hold", "service", svc.Name, "err", herr)
			case set:
				r.cfg.Logger.Info("service on hold: its budget is spent", "service", svc.Name, "budget", reason, "hold", hold)
			}
		}
	}
	if b := res.Budget; b != nil && svc.BudgetHeaders && len(b.Limits) > 0 {
		reported := make([]limiter.ProviderBudget, len(b.Limits))
		for i, l := range b.Limits {
			reported[i] = limiter.ProviderBudget{Name: l.Name, Limit: l.Limit, Remaining: l.Remaining, ResetIn: l.Reset}
		}
		if rerr := r.adapt.ReportBudgets(ctx, svc.Name, reported); rerr != nil {
			r.cfg.Logger.Debug("record the provider's budgets", "service", svc.Name, "err", rerr)
		}
	}
	if aimd == nil {
		return
	}
	switch {
	case err == nil:
		if limit, grew, aerr := r.adapt.Succeeded(ctx, svc.Name, *aimd); aerr != nil {
			r.cfg.Logger.Warn("adaptive limit: record success", "service", svc.Name, "err", aerr)
		} else if grew {
			r.cfg.Logger.Debug("adaptive limit grew", "service", svc.Name, "limit", limit)
		}
	case overloaded || ce.Class == caller.ClassTimeout:
		if limit, decreased, aerr := r.adapt.Overloaded(ctx, svc.Name, *aimd, gen); aerr != nil {
			r.cfg.Logger.Warn("adaptive limit: record overload", "service", svc.Name, "err", aerr)
		} else if decreased {
			r.cfg.Logger.Info("adaptive limit halved", "service", svc.Name, "limit", limit, "status", ce.HTTPStatus, "class", ce.Class)
		}
	}
}

// spentBudget names the spent budget that holds the longest ("requests", "tokens", a policy name).
func spentBudget(b *caller.Budget) string {
	name, longest := "", time.Duration(-1)
	for _, l := range b.Limits {
		if l.Spent() && l.Reset > longest {
			name, longest = l.Name, l.Reset
		}
	}
	if name == "" {
		return "budget"
	}
	return name
}

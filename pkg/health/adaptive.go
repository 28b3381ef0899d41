package health

// This file reads the limits that adapt to a service's answers (package limiter, Adaptive): the
// effective limit and the hold, for the report, the metrics and the probes' admission.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
)

// adapts reports whether svc has fleet-wide state that follows its answers.
func adapts(svc *registry.Service) bool {
	return svc.BudgetHeaders || aimdOf(svc) != nil
}

func aimdOf(svc *registry.Service) *limiter.AIMD {
	if svc.Adaptive == nil || svc.MaxConcurrency <= 0 {
		return nil
	}
	return &limiter.AIMD{Max: svc.MaxConcurrency, Min: svc.Adaptive.Min}
}

// adaptiveLimit returns the limit a probe of svc is admitted under (its effective limit), or why the
// round skips it: the service is on hold, or its state cannot be read.
func (c *Checker) adaptiveLimit(ctx context.Context, svc *registry.Service) (int, string) {
	if !adapts(svc) {
		return svc.MaxConcurrency, ""
	}
	st, err := c.adapt.State(ctx, svc.Name, aimdOf(svc))
	switch {
	case err != nil:
		c.log.Warn("health probe: adaptive state", "service", svc.Name, "err", err)
		return 0, SkipLimiterError
	case st.Hold > 0:
		return 0, SkipBudgetHold
	case st.Limit > 0:
		return st.Limit, ""
	}
	return svc.MaxConcurrency, ""
}

// adaptiveCheck fills the effective limit, the hold and the provider's reported budgets of service
// name into services (under mu).
func (c *Checker) adaptiveCheck(ctx context.Context, name string, mu *sync.Mutex, services map[string]ServiceCheck) {
	svc := c.reg.Services[name]
	if svc == nil || !adapts(svc) {
		return
	}
	st, err := c.adapt.State(ctx, name, aimdOf(svc))
	if err != nil {
		return
	}
	var budgets []BudgetCheck
	if svc.BudgetHeaders {
		if bs, err := c.adapt.Budgets(ctx, name); err == nil {
			for _, b := range bs {
				budgets = append(budgets, BudgetCheck{Name: b.Name, Limit: b.Limit, Remaining: b.Remaining, ResetSeconds: b.ResetIn.Seconds()})
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	sc := services[name]
	if st.Limit > 0 {
		sc.EffectiveLimit = st.Limit
	}
	if st.Hold > 0 {
		sc.HoldSeconds, sc.HoldBudget = st.Hold.Seconds(), st.HoldReason
	}
	sc.Budgets = budgets
	services[name] = sc
}

// waitingCheck fills the steps waiting for service name, parked per tenant and in wait rooms, into
// services (under mu).
func (c *Checker) waitingCheck(ctx context.Context, name string, mu *sync.Mutex, services map[string]ServiceCheck) {
	parked, err := c.fair.Waiting(ctx, name)
	if err != nil {
		return
	}
	rooms, err := c.sem.Waiting(ctx, name)
	if err != nil {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	sc := services[name]
	if len(parked) > 0 {
		sc.Waiting = parked
	}
	sc.WaitingInRooms = rooms
	services[name] = sc
}

// Limits is the adaptive state of one service, for metrics.
type Limits struct {
	Effective int                      // the effective limit (max_concurrency without adaptive); 0: unlimited
	Hold      time.Duration            // how long calls still wait for the provider's budget; 0: none
	Waiting   map[string]int           // steps parked in the service's fair queue, per tenant
	Budgets   []limiter.ProviderBudget // as the provider last reported them (budget_headers)
	// RateBudgets are the service's own budgets (rate_limit, rate_limits) by CAO's count, named
	// "requests 500/1m0s" or "units 90000/1m0s".
	RateBudgets map[string]limiter.BudgetState
}

// Limits returns every service's effective limit and hold, read now (within CheckTimeout); a
// service whose state cannot be read is left out.
func (c *Checker) Limits(ctx context.Context) map[string]Limits {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := make(map[string]Limits, len(c.reg.Services))
	waiting := make(map[string]map[string]int)
	own := make(map[string]map[string]limiter.BudgetState)
	for name, svc := range c.reg.Services {
		if len(svc.RateLimits) > 0 {
			wg.Go(func() {
				states, err := c.RateBudgets(ctx, name)
				if err != nil || len(states) != len(svc.RateLimits) {
					return
				}
				m := make(map[string]limiter.BudgetState, len(states))
				for i, st := range states {
					b := svc.RateLimits[i]
					m[fmt.Sprintf("%s %d/%s", b.Kind, b.Limit, b.Per)] = st
				}
				mu.Lock()
				own[name] = m
				mu.Unlock()
			})
		}
		if svc.MaxConcurrency > 0 {
			wg.Go(func() {
				w, err := c.fair.Waiting(ctx, name)
				if err == nil && len(w) > 0 {
					mu.Lock()
					waiting[name] = w
					mu.Unlock()
				}
			})
		}
		if !adapts(svc) {
			mu.Lock()
			out[name] = Limits{Effective: svc.MaxConcurrency}
			mu.Unlock()
			continue
		}
		wg.Go(func() {
			st, err := c.adapt.State(ctx, name, aimdOf(svc))
			if err != nil {
				return
			}
			l := Limits{Effective: svc.MaxConcurrency, Hold: st.Hold}
			if st.Limit > 0 {
				l.Effective = st.Limit
			}
			if svc.BudgetHeaders {
				l.Budgets, _ = c.adapt.Budgets(ctx, name)
			}
			mu.Lock()
			out[name] = l
			mu.Unlock()
		})
	}
	wg.Wait()
	for name, w := range waiting {
		if l, ok := out[name]; ok {
			l.Waiting = w
			out[name] = l
		}
	}
	for name, m := range own {
		if l, ok := out[name]; ok {
			l.RateBudgets = m
			out[name] = l
		}
	}
	return out
}

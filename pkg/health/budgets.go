package health

// This file admits probes through a service's budgets (rate_limit and rate_limits, package limiter's
// Budgets) and reads what is left of them.

import (
	"context"
	"sync"

	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
)

// ServiceBudgets returns svc's budgets in the limiter's form, each window widened by rateSlack as
// the runner admits calls: the state Budgets.Remaining reads is the one the workers write.
func ServiceBudgets(svc *registry.Service) []limiter.Budget {
	out := make([]limiter.Budget, len(svc.RateLimits))
	for i, b := range svc.RateLimits {
		kind := limiter.RequestBudget
		if b.Kind == registry.BudgetUnits {
			kind = limiter.UnitBudget
		}
		out[i] = limiter.Budget{Name: b.ID, Kind: kind, Limit: b.Limit, Per: b.Per + rateSlack}
	}
	return out
}

// reserveProbe takes a request of each requests budget of svc for a probe, without waiting; a probe
// costs no units, but a spent units budget skips it too (it needs one free unit, as any call). It
// returns the reason to skip when a budget has no room or the limiter does not answer.
func (c *Checker) reserveProbe(ctx context.Context, svc *registry.Service) (limiter.Grant, string) {
	budgets := ServiceBudgets(svc)
	asks := make([]limiter.Ask, len(budgets))
	for i, b := range budgets {
		asks[i] = limiter.Ask{Budget: b} // 0 units
	}
	g, denial, err := c.rate.Reserve(ctx, svc.Name, asks)
	switch {
	case err != nil:
		c.log.Warn("health probe: rate budget", "service", svc.Name, "err", err)
		return limiter.Grant{}, SkipLimiterError
	case denial != nil:
		return limiter.Grant{}, SkipRateLimit
	}
	return g, ""
}

// rateBudgetCheck fills service name's own budgets, as counted now, into services (under mu).
func (c *Checker) rateBudgetCheck(ctx context.Context, name string, mu *sync.Mutex, services map[string]ServiceCheck) {
	svc := c.reg.Services[name]
	states, err := c.RateBudgets(ctx, name)
	if err != nil || len(states) != len(svc.RateLimits) {
		return
	}
	out := make([]RateBudgetCheck, len(states))
	for i, st := range states {
		out[i] = RateBudgetCheck{Kind: svc.RateLimits[i].Kind, Limit: st.Limit, PerSeconds: svc.RateLimits[i].Per.Seconds(),
			Used: st.Used, Remaining: st.Remaining, ResetSeconds: st.Reset.Seconds()}
	}
	mu.Lock()
	defer mu.Unlock()
	sc := services[name]
	sc.RateBudgets = out
	services[name] = sc
}

// RateBudgets returns what is left of each budget of service name (rate_limit, rate_limits) now,
// by CAO's own count, in the registry's order (nil for a service without budgets): for
// /health/services and metrics, beside the budgets the provider reports on its answers.
func (c *Checker) RateBudgets(ctx context.Context, name string) ([]limiter.BudgetState, error) {
	svc := c.reg.Services[name]
	if svc == nil || len(svc.RateLimits) == 0 {
		return nil, nil
	}
	return c.rate.Remaining(ctx, name, ServiceBudgets(svc))
}

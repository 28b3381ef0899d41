package health

// This file explains why a job's steps wait for their services, for the job object: what the
// workers noted (package waits) with the service's state as of now.

import (
	"context"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/view"
	"github.com/cao-run/cao/pkg/waits"
)

// StepWaits returns why job jobID's steps wait, by step name, for the steps a worker noted as
// waiting. Errors reading Redis leave the answer empty: the job object is whole without it.
func (c *Checker) StepWaits(ctx context.Context, jobID string) map[string]view.Waiting {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
	defer cancel()
	notes, err := c.waits.Job(ctx, jobID)
	if err != nil || len(notes) == 0 {
		return nil
	}
	now := time.Now()
	out := make(map[string]view.Waiting, len(notes))
	for step, n := range notes {
		svc := c.reg.Services[n.Service]
		if svc == nil {
			continue
		}
		w := view.Waiting{Reason: n.Reason, Service: n.Service, Since: n.Since, Message: c.explain(ctx, svc, n, now)}
		if !n.Until.IsZero() {
			u := n.Until.UTC()
			w.Until = &u
		}
		out[step] = w
	}
	return out
}

// explain words note n about svc for people, with the service's state now.
func (c *Checker) explain(ctx context.Context, svc *registry.Service, n waits.Note, now time.Time) string {
	switch n.Reason {
	case waits.Slot:
		limit := svc.MaxConcurrency
		if aimd := aimdOf(svc); aimd != nil {
			if st, err := c.adapt.State(ctx, svc.Name, aimd); err == nil && st.Limit > 0 {
				limit = st.Limit
			}
		}
		used, err := c.sem.InUse(ctx, svc.Name)
		if err != nil {
			return fmt.Sprintf("waiting for a slot on %s (max_concurrency %d)", svc.Name, limit)
		}
		msg := fmt.Sprintf("waiting for a slot on %s: %d/%d in use", svc.Name, used, limit)
		if parked, err := c.fair.Waiting(ctx, svc.Name); err == nil {
			total := 0
			for _, k := range parked {
				total += k
			}
			switch {
			case total == 1:
				msg += ", 1 step parked, served round-robin by tenant"
			case total > 1:
				msg += fmt.Sprintf(", %d steps parked, served round-robin by tenant", total)
			}
		}
		return msg
	case waits.TenantSlot:
		used, err := c.sem.InUse(ctx, limiter.TenantSemaphore(svc.Name, n.Tenant))
		if err != nil {
			return fmt.Sprintf("waiting for a slot of tenant %s's share of %s", n.Tenant, svc.Name)
		}
		return fmt.Sprintf("waiting for a slot of tenant %s's share of %s: %d/%d in use", n.Tenant, svc.Name, used, svc.MaxConcurrencyPerTenant)
	case waits.KeySlot:
		return fmt.Sprintf("waiting for a slot of its concurrency key on %s", svc.Name)
	case waits.Hold:
		if adapts(svc) {
			if st, err := c.adapt.State(ctx, svc.Name, nil); err == nil && st.Hold > 0 {
				return holdMessage(svc.Name, st.HoldReason, st.Hold)
			}
		}
		return fmt.Sprintf("%s's budget was spent; its calls resume shortly", svc.Name)
	case waits.Rate:
		budget := "rate budget"
		if n.Budget != "" {
			budget = n.Budget + " budget"
		}
		if left := n.Until.Sub(now); !n.Until.IsZero() && left > 0 {
			return fmt.Sprintf("waiting for %s's %s: room in %s", svc.Name, budget, seconds(left))
		}
		return fmt.Sprintf("waiting for %s's %s", svc.Name, budget)
	}
	return "waiting for " + svc.Name
}

// holdMessage words a provider's hold: "token budget resets in 4.2 s".
func holdMessage(service, reason string, left time.Duration) string {
	switch reason {
	case "tokens":
		return fmt.Sprintf("%s's token budget resets in %s", service, seconds(left))
	case "requests":
		return fmt.Sprintf("%s's request budget resets in %s", service, seconds(left))
	case "retry_after":
		return fmt.Sprintf("%s asked to wait: calls resume in %s", service, seconds(left))
	case "":
		return fmt.Sprintf("%s's budget resets in %s", service, seconds(left))
	}
	return fmt.Sprintf("%s's %s budget resets in %s", service, reason, seconds(left))
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

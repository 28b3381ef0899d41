package node

import (
	"context"

	"github.com/cao-run/cao/pkg/metrics"
)

// limits reads every service's effective limit, hold and parked steps for
// cao_service_effective_limit, cao_service_hold_seconds and cao_service_waiting_steps.
func (n *Node) limits() map[string]metrics.ServiceLimits {
	out := map[string]metrics.ServiceLimits{}
	for name, l := range n.Health.Limits(context.Background()) {
		sl := metrics.ServiceLimits{Effective: l.Effective, Hold: l.Hold, Waiting: l.Waiting}
		for _, b := range l.Budgets {
			sl.Budgets = append(sl.Budgets, metrics.Budget{Name: b.Name, Remaining: b.Remaining, ResetIn: b.ResetIn})
		}
		if len(l.RateBudgets) > 0 {
			sl.Own = make(map[string]int64, len(l.RateBudgets))
			for name, st := range l.RateBudgets {
				sl.Own[name] = st.Remaining
			}
		}
		out[name] = sl
	}
	return out
}

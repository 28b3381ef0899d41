package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ServiceLimits is the adaptive state of one service, as a LimitCollector reads it.
type ServiceLimits struct {
	Effective int            // the limit calls are admitted under now; 0: unlimited
	Hold      time.Duration  // how long calls still wait for the provider's budget to reset; 0: none
	Waiting   map[string]int // steps parked while the service is saturated, per tenant
	Budgets   []Budget       // as the provider last reported them
	// Own are the service's own budgets (rate_limit, rate_limits) by CAO's count: remaining units
	// by budget name.
	Own map[string]int64
}

// Budget is one rate-limit budget as a provider reported it.
type Budget struct {
	Name      string
	Remaining int64
	ResetIn   time.Duration // 0 when past or not reported
}

// LimitCollector exposes, per service, the fleet-wide limits that adapt to the service's answers,
// read at scrape time: cao_service_effective_limit (max_concurrency, or the AIMD limit of an adaptive
// service), cao_service_hold_seconds (the provider said a budget is spent) and
// cao_service_waiting_steps (steps parked per tenant while the service is saturated). Every process reads
// the same Redis state, so they report the same values.
type LimitCollector struct {
	effective *prometheus.Desc
	hold      *prometheus.Desc
	waiting   *prometheus.Desc
	remaining *prometheus.Desc
	reset     *prometheus.Desc
	own       *prometheus.Desc
	read      func() map[string]ServiceLimits
}

// NewLimitCollector returns a collector calling read at each scrape.
func NewLimitCollector(read func() map[string]ServiceLimits) *LimitCollector {
	return &LimitCollector{
		effective: prometheus.NewDesc("cao_service_effective_limit",
			"Fleet-wide concurrency limit calls are admitted under now, by service: max_concurrency, or the adaptive (AIMD) limit (0: unlimited).",
			[]string{"service"}, nil),
		hold: prometheus.NewDesc("cao_service_hold_seconds",
			"Seconds calls to the service still wait because the provider said its rate-limit budget was spent (0: none), by service.",
			[]string{"service"}, nil),
		waiting: prometheus.NewDesc("cao_service_waiting_steps",
			"Steps parked in the service's fair queue while it is saturated, by service and tenant (tenants with none are left out).",
			[]string{"service", "tenant"}, nil),
		remaining: prometheus.NewDesc("cao_service_budget_remaining",
			"Units left in a rate-limit budget as the provider last reported it on an answer, by service and budget (requests, tokens, an IETF policy name).",
			[]string{"service", "budget"}, nil),
		reset: prometheus.NewDesc("cao_service_budget_reset_seconds",
			"Seconds until a rate-limit budget refills, as the provider last reported it, by service and budget (0 when past or not reported).",
			[]string{"service", "budget"}, nil),
		own: prometheus.NewDesc("cao_service_rate_budget_remaining",
			"Requests or units left in one of the service's own budgets (rate_limit, rate_limits) by CAO's fleet-wide count, by service and budget (\"units 90000/1m0s\").",
			[]string{"service", "budget"}, nil),
		read: read,
	}
}

// Describe implements prometheus.Collector.
func (c *LimitCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.effective
	ch <- c.hold
	ch <- c.waiting
	ch <- c.remaining
	ch <- c.reset
	ch <- c.own
}

// Collect implements prometheus.Collector.
func (c *LimitCollector) Collect(ch chan<- prometheus.Metric) {
	for svc, l := range c.read() {
		ch <- prometheus.MustNewConstMetric(c.effective, prometheus.GaugeValue, float64(l.Effective), svc)
		ch <- prometheus.MustNewConstMetric(c.hold, prometheus.GaugeValue, l.Hold.Seconds(), svc)
		for tenant, n := range l.Waiting {
			ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(n), svc, tenant)
		}
		for name, n := range l.Own {
			ch <- prometheus.MustNewConstMetric(c.own, prometheus.GaugeValue, float64(n), svc, name)
		}
		for _, b := range l.Budgets {
			ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, float64(b.Remaining), svc, b.Name)
			ch <- prometheus.MustNewConstMetric(c.reset, prometheus.GaugeValue, b.ResetIn.Seconds(), svc, b.Name)
		}
	}
}

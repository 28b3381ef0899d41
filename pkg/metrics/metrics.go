// Package metrics defines CAO's Prometheus metrics on a registry of its own, served at /metrics.
package metrics

import (
	"github.com/cao-run/cao/pkg/orchestrator"

	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds the collectors a process updates.
type Metrics struct {
	Registry      *prometheus.Registry
	JobsCreated   *prometheus.CounterVec   // feature
	Attempts      *prometheus.CounterVec   // service, outcome
	AttemptTime   *prometheus.HistogramVec // service
	Busy          *prometheus.CounterVec   // service
	WSClients     prometheus.Gauge
	WSSlowClosed  prometheus.Counter
	RateLimited   *prometheus.CounterVec // limit: api (CAO_RATE_LIMIT) or websocket (CAO_WS_MAX_PER_TENANT)
	OutboxPending prometheus.GaugeFunc
}

// New registers CAO's metrics (and the Go runtime's) on a fresh registry. outbox reports the number
// of outbox rows waiting (may be nil).
func New(outbox func() float64) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		JobsCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_jobs_created_total", Help: "Jobs created, by feature.",
		}, []string{"feature"}),
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_step_attempts_total", Help: "Step attempts finished, by service and outcome.",
		}, []string{"service", "outcome"}),
		AttemptTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cao_step_attempt_seconds", Help: "Duration of service calls.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12),
		}, []string{"service"}),
		Busy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_service_busy_total", Help: "Steps requeued because their service was at max_concurrency or out of rate budget.",
		}, []string{"service"}),
		WSClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cao_websocket_clients", Help: "Connected WebSocket clients.",
		}),
		WSSlowClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cao_websocket_slow_closed_total", Help: "WebSocket clients closed for being too slow.",
		}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_http_rate_limited_total", Help: "Requests answered 429 because a tenant was over a limit, by limit.",
		}, []string{"limit"}),
	}
	reg.MustRegister(m.JobsCreated, m.Attempts, m.AttemptTime, m.Busy, m.WSClients, m.WSSlowClosed, m.RateLimited)
	if outbox != nil {
		m.OutboxPending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cao_outbox_pending", Help: "Tasks committed but not yet moved to Redis.",
		}, outbox)
		reg.MustRegister(m.OutboxPending)
	}
	return m
}

// ObserveAttempt records a finished attempt under its outcome label: succeeded, interrupted (given
// back without using an attempt), retryable_error or error.
func (m *Metrics) ObserveAttempt(service string, out orchestrator.Outcome, d time.Duration) {
	m.Attempts.WithLabelValues(service, AttemptOutcome(out)).Inc()
	m.AttemptTime.WithLabelValues(service).Observe(d.Seconds())
}

// AttemptOutcome is the outcome label of an attempt.
func AttemptOutcome(out orchestrator.Outcome) string {
	switch {
	case out.Interrupted:
		return "interrupted"
	case out.Err != nil && out.Retryable:
		return "retryable_error"
	case out.Err != nil:
		return "error"
	}
	return "succeeded"
}

// LeaseCollector exposes leases in use and max per service, read at scrape time.
type LeaseCollector struct {
	inUse *prometheus.Desc
	max   *prometheus.Desc
	read  func() map[string][2]int // service -> {in use, max}
}

// NewLeaseCollector returns a collector calling read at each scrape.
func NewLeaseCollector(read func() map[string][2]int) *LeaseCollector {
	return &LeaseCollector{
		inUse: prometheus.NewDesc("cao_service_leases_in_use", "Fleet-wide semaphore leases held, by service.", []string{"service"}, nil),
		max:   prometheus.NewDesc("cao_service_leases_max", "Fleet-wide max_concurrency, by service (0: unlimited).", []string{"service"}, nil),
		read:  read,
	}
}

// Describe implements prometheus.Collector.
func (c *LeaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.inUse; ch <- c.max }

// Collect implements prometheus.Collector.
func (c *LeaseCollector) Collect(ch chan<- prometheus.Metric) {
	for svc, v := range c.read() {
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(v[0]), svc)
		ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(v[1]), svc)
	}
}

// Package metrics defines CAO's Prometheus metrics on a registry of its own, served at /metrics.
package metrics

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
)

// Metrics holds the collectors a process updates.
type Metrics struct {
	Registry      *prometheus.Registry
	JobsCreated   *prometheus.CounterVec   // feature
	JobsFinished  *prometheus.CounterVec   // feature, status: counted once per job ending, by the process that committed it
	JobDuration   *prometheus.HistogramVec // feature, status: created_at -> finished_at
	Attempts      *prometheus.CounterVec   // service, outcome
	AttemptTime   *prometheus.HistogramVec // service
	StepWait      *prometheus.HistogramVec // service, reason: slot or rate_budget
	Busy          *prometheus.CounterVec   // service
	StepTasks     *prometheus.CounterVec   // via: bell or poll (runner.ViaBell, runner.ViaPoll)
	QueueDepth    *prometheus.GaugeVec     // queue, state: set by a QueueSampler
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
		JobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_jobs_finished_total",
			Help: "Jobs that ended (status completed, failed or cancelled), by feature; counted once per ending by the process that committed it.",
		}, []string{"feature", "status"}),
		JobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cao_job_duration_seconds",
			Help:    "Time from a job's creation to its end, by feature and final status.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2.5, 14), // 100ms to about 4h
		}, []string{"feature", "status"}),
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_step_attempts_total", Help: "Step attempts finished, by service and outcome.",
		}, []string{"service", "outcome"}),
		AttemptTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cao_step_attempt_seconds", Help: "Duration of service calls.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12),
		}, []string{"service"}),
		StepWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cao_step_wait_seconds",
			Help:    "Time a step waited in its worker before it got its service's slot (reason slot) or rate budget (reason rate_budget).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14), // 1ms to about 2.5m
		}, []string{"service", "reason"}),
		Busy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_service_busy_total", Help: "Steps requeued because their service was at max_concurrency or out of rate budget.",
		}, []string{"service"}),
		StepTasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cao_step_tasks_total",
			Help: "Step tasks a worker took, by how: bell (taken from its queue as soon as it was dispatched) or poll (handed out by the worker's look at its queues).",
		}, []string{"via"}),
		QueueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cao_queue_depth",
			Help: "Tasks in each Asynq queue by state (pending, active, scheduled, retry, archived), sampled in the background; every process reports the same values.",
		}, []string{"queue", "state"}),
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
	reg.MustRegister(m.JobsCreated, m.JobsFinished, m.JobDuration, m.Attempts, m.AttemptTime, m.StepWait, m.Busy, m.StepTasks,
		m.QueueDepth, m.WSClients, m.WSSlowClosed, m.RateLimited)
	if outbox != nil {
		m.OutboxPending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cao_outbox_pending", Help: "Tasks committed but not yet moved to Redis.",
		}, outbox)
		reg.MustRegister(m.OutboxPending)
	}
	return m
}

// ObserveAttempt records a finished attempt under its outcome label (see AttemptOutcome).
func (m *Metrics) ObserveAttempt(service string, out orchestrator.Outcome, d time.Duration) {
	m.Attempts.WithLabelValues(service, AttemptOutcome(out)).Inc()
	m.AttemptTime.WithLabelValues(service).Observe(d.Seconds())
}

// AttemptOutcome is the outcome label of an attempt: succeeded; interrupted (given back without
// using an attempt: the worker is stopping or lost its lease); cancelled (its job was cancelled while
// the call ran: not a failure of the service); retryable_error; or error.
func AttemptOutcome(out orchestrator.Outcome) string {
	switch {
	case out.Interrupted:
		return "interrupted"
	case out.Err != nil && out.ErrorClass == caller.ClassCancelled:
		return "cancelled"
	case out.Err != nil && out.Retryable:
		return "retryable_error"
	case out.Err != nil:
		return "error"
	}
	return "succeeded"
}

// ObserveJobFinished counts a job that ended and observes its duration (creation to end). It is
// orchestrator.Hooks.OnJobFinished: called once per ending, by the process that committed it.
func (m *Metrics) ObserveJobFinished(job store.Job) {
	status := JobStatus(job.Status)
	m.JobsFinished.WithLabelValues(job.FeatureName, status).Inc()
	if job.FinishedAt != nil {
		m.JobDuration.WithLabelValues(job.FeatureName, status).Observe(max(0, job.FinishedAt.Sub(job.CreatedAt).Seconds()))
	}
}

// JobStatus is the status label of a job: its status in lower case (completed, failed, cancelled).
func JobStatus(s store.JobStatus) string { return strings.ToLower(string(s)) }

// ObserveWait records how long a step waited in its worker for its service (reason
// runner.WaitSlot or runner.WaitRateBudget). It is runner.Hooks.OnWait.
func (m *Metrics) ObserveWait(service, reason string, d time.Duration) {
	m.StepWait.WithLabelValues(service, reason).Observe(max(0, d.Seconds()))
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

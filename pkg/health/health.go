// Package health reports whether CAO's dependencies answer: Postgres (or SQLite), Redis, the queues,
// and each registered service (its optional probe and its fleet-wide leases in use).
//
// Service probes never run per request. A background loop probes every service that has a health
// request once per ProbeInterval, each probe admitted like a step's call: a slot of the service's
// fleet-wide semaphore (max_concurrency) and a request of its rate budget (rate_limit). When either
// has no room right now the round skips that service and the report keeps its last result, with its
// time and age. The loop runs only in a process that serves /health/services: it starts with the
// first report asked for (or with Start) and ends with Stop. The backend checks (database and Redis
// pings, queue statistics, leases in use) are cheap and stay per request, bounded by CheckTimeout.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/startstop"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/waits"
)

// Overall statuses.
const (
	StatusOK       = "ok"
	StatusDegraded = "degraded"
	StatusDown     = "down"
)

// Probe outcomes (ServiceCheck.Probe).
const (
	ProbeOK      = "ok"
	ProbeFailed  = "failed"
	ProbePending = "pending" // the service has a probe that has not run yet
)

// Reasons a round did not probe a service (ServiceCheck.ProbeSkipped).
const (
	SkipMaxConcurrency = "max_concurrency" // every slot of the service was taken (or steps wait for one)
	SkipRateLimit      = "rate_limit"      // the service's rate budget had no room
	SkipBudgetHold     = "budget_hold"     // the service was on hold: the provider said its budget was spent
	SkipLimiterError   = "limiter_unavailable"
)

// Unreachable is the error a report gives for a backend that does not answer. The driver's message
// is logged, never returned: it may name hosts, users and databases.
const Unreachable = "unreachable"

// Defaults of Config.
const (
	// DefaultProbeInterval is how often the background loop probes each service.
	DefaultProbeInterval = 15 * time.Second
	// DefaultProbeTimeout bounds one probe (a service's own timeout may be shorter).
	DefaultProbeTimeout = 5 * time.Second
	// DefaultCheckTimeout bounds the per-request backend checks of Run and Status.
	DefaultCheckTimeout = 2 * time.Second
)

// statusReuse is how long Status reuses the last backend pings, so that unauthenticated callers
// cannot turn requests into a stream of database round trips.
const statusReuse = time.Second

// rateSlack widens the rate window when admitting a probe, as the runner does for a step's call.
const rateSlack = 50 * time.Millisecond

// Config holds the optional settings of a Checker; the zero value uses the defaults.
type Config struct {
	// ProbeInterval is how often each service is probed. Default DefaultProbeInterval.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe; it is also kept below half of a limited service's lease_ttl, so
	// a probe never outlives its slot. Default DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// CheckTimeout bounds the backend checks of one Run or Status. Default DefaultCheckTimeout.
	CheckTimeout time.Duration
	// Logger receives the details of failures (drivers' messages, redacted probe errors).
	// Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = DefaultCheckTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Check is the result of one dependency check.
type Check struct {
	Status    string  `json:"status"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"` // Unreachable or empty
	Backend   string  `json:"backend,omitempty"`
}

// BudgetCheck is one budget as the provider reported it.
type BudgetCheck struct {
	Name         string  `json:"name"`            // "requests", "tokens", an IETF policy name
	Limit        int64   `json:"limit,omitempty"` // its size, when reported
	Remaining    int64   `json:"remaining"`
	ResetSeconds float64 `json:"reset_seconds"` // until it refills (0 when past or not reported)
}

// RateBudgetCheck is one of a service's budgets (rate_limit, rate_limits) as CAO counts it.
type RateBudgetCheck struct {
	Kind         string  `json:"kind"` // requests or units
	Limit        int64   `json:"limit"`
	PerSeconds   float64 `json:"per_seconds"`
	Used         int64   `json:"used"`          // in the window now (unsettled calls count their reservation)
	Remaining    int64   `json:"remaining"`     // limit - used, at least 0
	ResetSeconds float64 `json:"reset_seconds"` // until the oldest call leaves the window (0: empty)
}

// QueueCheck describes one queue.
type QueueCheck struct {
	Pending   int  `json:"pending"`
	Active    int  `json:"active"`
	Scheduled int  `json:"scheduled"`
	Retry     int  `json:"retry"`
	Archived  int  `json:"archived"`
	Paused    bool `json:"paused"`
}

// ServiceCheck describes one registered service.
type ServiceCheck struct {
	Status         string `json:"status"`
	Kind           string `json:"kind"`
	LeasesInUse    int    `json:"leases_in_use"`
	MaxConcurrency int    `json:"max_concurrency"` // 0: unlimited
	// EffectiveLimit is the fleet-wide limit calls are admitted under now: max_concurrency, or for an
	// adaptive service its AIMD limit (between adaptive.min and max_concurrency). 0: unlimited.
	EffectiveLimit int `json:"effective_limit"`
	// HoldSeconds is how long calls to the service still wait because the provider said a budget
	// was spent, HoldBudget which one ("requests", "tokens", an IETF policy name, "retry_after").
	HoldSeconds float64 `json:"hold_seconds,omitempty"`
	HoldBudget  string  `json:"hold_budget,omitempty"`
	// Waiting counts the steps parked in the service's fair queue while it is saturated, per tenant
	// (tenants with none are left out); WaitingInRooms the steps waiting in workers' wait rooms,
	// next in line for a slot.
	Waiting        map[string]int `json:"waiting,omitempty"`
	WaitingInRooms int            `json:"waiting_in_rooms,omitempty"`
	// Budgets are the rate-limit budgets the provider reported on its last answers that reported any
	// (budget_headers), with the time left until each resets.
	Budgets []BudgetCheck `json:"budgets,omitempty"`
	// RateBudgets are the service's own budgets (rate_limit, rate_limits) by CAO's fleet-wide count,
	// in the registry's order.
	RateBudgets []RateBudgetCheck `json:"rate_budgets,omitempty"`
	// Probe is ProbeOK or ProbeFailed (the last probe's outcome), ProbePending before the first
	// probe, or empty when the service has no probe.
	Probe     string  `json:"probe,omitempty"`
	LatencyMS float64 `json:"latency_ms,omitempty"` // of the last probe
	Error     string  `json:"error,omitempty"`      // why the last probe failed, without detail
	// ProbedAt is when the last probe was sent, ProbeAgeSeconds how long ago (at the report's time).
	ProbedAt        *time.Time `json:"probed_at,omitempty"`
	ProbeAgeSeconds float64    `json:"probe_age_seconds,omitempty"`
	// ProbeSkipped says why the latest round did not probe the service (Skip*); empty when it did.
	ProbeSkipped string `json:"probe_skipped,omitempty"`
}

// Report is the body of /health/services.
type Report struct {
	Status   string                  `json:"status"`
	Postgres Check                   `json:"postgres"`
	Redis    Check                   `json:"redis"`
	Queues   map[string]QueueCheck   `json:"queues"`
	Services map[string]ServiceCheck `json:"services"`
	Outbox   int64                   `json:"outbox_pending"`
	Checked  time.Time               `json:"checked_at"`
}

// probeResult is the last probe of one service, kept between rounds.
type probeResult struct {
	probed  bool // a probe ran at least once
	ok      bool
	latency time.Duration
	err     string // fixed message for the report
	at      time.Time
	skipped string // why the latest round skipped it; empty when it probed
}

// Checker runs the checks and the background probe loop.
type Checker struct {
	store  store.Store
	rdb    redis.UniversalClient
	insp   *asynq.Inspector
	reg    *registry.Registry
	sem    *limiter.Semaphore
	rate   *limiter.Budgets
	adapt  *limiter.Adaptive  // holds and adaptive limits, on sem's Redis and prefix
	fair   *limiter.FairQueue // steps parked while their service is saturated
	waits  *waits.Book        // why steps wait, as workers noted it
	caller *caller.Caller
	queues []string
	cfg    Config
	log    *slog.Logger
	probed []*registry.Service // the services that have a probe, by name

	loop startstop.Loop

	mu      sync.Mutex
	stopped bool // Stop was called: a report no longer starts the loop
	rounds  int  // completed probe rounds
	results map[string]probeResult

	live liveCache
}

// liveCache holds the last backend pings for Status.
type liveCache struct {
	mu       sync.Mutex
	at       time.Time
	pg, rd   bool
	inflight chan struct{} // closed when the running refresh ends; nil when none runs
}

// NewChecker returns a checker over the process's dependencies. Probes take their service's slots
// from sem and their requests from rate, the ones the workers use.
func NewChecker(st store.Store, rdb redis.UniversalClient, reg *registry.Registry, sem *limiter.Semaphore, rate *limiter.RateLimiter, c *caller.Caller, queues []string, cfg Config) *Checker {
	cfg = cfg.withDefaults()
	ch := &Checker{
		store: st, rdb: rdb, insp: asynq.NewInspectorFromRedisClient(rdb), reg: reg, sem: sem, rate: limiter.BudgetsFor(rate), caller: c, adapt: limiter.AdaptiveFor(sem), fair: limiter.FairQueueFor(sem), waits: waits.New(rdb, sem.Prefix()),
		queues: queues, cfg: cfg, log: cfg.Logger, results: map[string]probeResult{},
	}
	for _, name := range sortedServices(reg) {
		if svc := reg.Services[name]; svc.Health != nil {
			ch.probed = append(ch.probed, svc)
		}
	}
	return ch
}

// Start starts the background probe loop (a no-op when it runs, or when no service has a probe). The
// loop's first round runs at once. Run and Status start it too, so calling Start only makes the first
// results arrive before the first request.
func (c *Checker) Start(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = false
	c.startLocked()
	return nil
}

// Stop ends the probe loop and waits for its round to finish (or ctx to end). After Stop, reports
// no longer start the loop; Start does. Safe to call twice.
func (c *Checker) Stop(ctx context.Context) error {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	_, err := c.loop.Stop(ctx)
	return err
}

// ensureStarted starts the probe loop unless it runs or Stop was called.
func (c *Checker) ensureStarted() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		c.startLocked()
	}
}

func (c *Checker) startLocked() {
	if len(c.probed) == 0 || c.loop.Running() {
		return
	}
	// The loop belongs to the checker, not to the request that happened to start it.
	c.loop.Start(context.Background(), c.probeLoop)
}

func (c *Checker) probeLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.ProbeInterval)
	defer t.Stop()
	for {
		c.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// round probes every service that has a probe, concurrently, and returns when all are done.
func (c *Checker) round(ctx context.Context) {
	var wg sync.WaitGroup
	for _, svc := range c.probed {
		wg.Go(func() { c.probeService(ctx, svc) })
	}
	wg.Wait()
	if ctx.Err() == nil {
		c.mu.Lock()
		c.rounds++
		c.mu.Unlock()
	}
}

// probeService probes svc if its limits have room right now, and records the outcome or why it
// was skipped.
func (c *Checker) probeService(ctx context.Context, svc *registry.Service) {
	timeout := c.cfg.ProbeTimeout
	if svc.Kind != registry.KindMock {
		lease, grant, skip := c.admit(ctx, svc)
		if skip != "" {
			if ctx.Err() == nil {
				c.skip(svc.Name, skip)
			}
			return
		}
		defer c.release(lease)
		if lease.Token != 0 && svc.LeaseTTL > 0 {
			timeout = min(timeout, svc.LeaseTTL/2)
		}
		if grant.ID != "" {
			sctx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
			if err := c.rate.Sent(sctx, grant); err != nil {
				c.log.Warn("health probe: record send time", "service", svc.Name, "err", err)
			}
			cancel()
		}
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	at := time.Now()
	err := c.caller.Probe(pctx, svc)
	latency := time.Since(at)
	if ctx.Err() != nil {
		return // stopping: this probe says nothing about the service
	}
	res := probeResult{probed: true, ok: err == nil, latency: latency, at: at.UTC()}
	if err != nil {
		res.err = probeError(pctx, err)
	}
	c.mu.Lock()
	prev := c.results[svc.Name]
	c.results[svc.Name] = res
	c.mu.Unlock()
	switch {
	case err != nil && (!prev.probed || prev.ok):
		c.log.Warn("health probe failed", "service", svc.Name, "err", err) // caller errors are redacted
	case err != nil:
		c.log.Debug("health probe failed", "service", svc.Name, "err", err)
	case prev.probed && !prev.ok:
		c.log.Info("health probe recovered", "service", svc.Name)
	}
}

// admit takes a slot of svc's semaphore (when it has max_concurrency) and a request of its rate
// budgets (rate_limit, rate_limits) without waiting: a probe never queues behind steps, it skips the
// round. It returns the reason to skip when either has no room or the limiter does not answer.
func (c *Checker) admit(ctx context.Context, svc *registry.Service) (limiter.Lease, limiter.Grant, string) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
	defer cancel()
	limit, skip := c.adaptiveLimit(actx, svc)
	if skip != "" {
		return limiter.Lease{}, limiter.Grant{}, skip
	}
	// An empty waiter ID never queues, and is granted a slot only when no step waits for one.
	lease, err := c.sem.Acquire(actx, svc.Name, limit, svc.LeaseTTL, "")
	switch {
	case errors.Is(err, limiter.ErrFull):
		return limiter.Lease{}, limiter.Grant{}, SkipMaxConcurrency
	case err != nil:
		c.log.Warn("health probe: service slot", "service", svc.Name, "err", err)
		return limiter.Lease{}, limiter.Grant{}, SkipLimiterError
	}
	grant, skip := c.reserveProbe(actx, svc)
	if skip != "" {
		c.release(lease)
		return limiter.Lease{}, limiter.Grant{}, skip
	}
	return lease, grant, ""
}

func (c *Checker) release(lease limiter.Lease) {
	if lease.Token == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.CheckTimeout)
	defer cancel()
	if err := c.sem.Release(ctx, lease); err != nil && !errors.Is(err, limiter.ErrLeaseLost) {
		c.log.Warn("health probe: release service slot", "service", lease.Name, "err", err)
	}
}

// skip records that this round did not probe the service; its last result stays.
func (c *Checker) skip(name, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.results[name]
	r.skipped = reason
	c.results[name] = r
}

// probeError is the report's message for a failed probe: the kind of failure, never the detail
// (which may quote the service's answer).
func probeError(pctx context.Context, err error) string {
	var ce *caller.Error
	if !errors.As(err, &ce) {
		return "probe failed"
	}
	switch {
	case ce.HTTPStatus != 0:
		return fmt.Sprintf("probe answered HTTP %d", ce.HTTPStatus)
	case ce.Class == caller.ClassTimeout || errors.Is(pctx.Err(), context.DeadlineExceeded):
		return "probe timed out"
	}
	return "probe failed (" + ce.Class + ")"
}

// Unavailable reports whether the database or Redis does not answer right now (within a second), so
// that a failed request can be answered 503 rather than 500.
func (c *Checker) Unavailable(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return c.store.Ping(ctx) != nil || c.rdb.Ping(ctx).Err() != nil
}

// Status returns only the overall status (StatusOK, StatusDegraded or StatusDown), cheaply: the
// database and Redis pings (reused for a second across callers, bounded by CheckTimeout) and the
// probe results the background loop keeps. It is what callers without a key may see.
func (c *Checker) Status(ctx context.Context) string {
	c.ensureStarted()
	pg, rd := c.backends(ctx)
	return overall(pg, rd, c.services(time.Now()))
}

// backends returns whether the database and Redis answered, from a ping at most statusReuse old. One
// caller pings at a time; the others wait for its answer.
func (c *Checker) backends(ctx context.Context) (pg, rd bool) {
	l := &c.live
	l.mu.Lock()
	if time.Since(l.at) < statusReuse {
		defer l.mu.Unlock()
		return l.pg, l.rd
	}
	if w := l.inflight; w != nil {
		l.mu.Unlock()
		<-w // bounded by CheckTimeout
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.pg, l.rd
	}
	w := make(chan struct{})
	l.inflight = w
	l.mu.Unlock()

	// The answer is shared: a caller that goes away must not make it "down" for the others.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.CheckTimeout)
	defer cancel()
	var pgErr, rdErr error
	var wg sync.WaitGroup
	wg.Go(func() { pgErr = c.store.Ping(pctx) })
	wg.Go(func() { rdErr = c.rdb.Ping(pctx).Err() })
	wg.Wait()
	c.logBackend("database", pgErr)
	c.logBackend("redis", rdErr)
	pg, rd = pgErr == nil, rdErr == nil
	l.mu.Lock()
	l.at, l.pg, l.rd, l.inflight = time.Now(), pg, rd, nil
	l.mu.Unlock()
	close(w)
	return pg, rd
}

func (c *Checker) logBackend(name string, err error) {
	if err != nil {
		c.log.Warn("health: "+name+" unreachable", "err", err)
	}
}

// Run returns the full report: the backend checks, made now within CheckTimeout, and each service's
// leases in use with the last result of its background probe.
func (c *Checker) Run(ctx context.Context) Report {
	c.ensureStarted()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
	defer cancel()
	now := time.Now()
	r := Report{Queues: map[string]QueueCheck{}, Services: c.services(now), Checked: now.UTC()}
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		err := c.store.Ping(ctx)
		chk := c.timed("database", start, err)
		chk.Backend = c.store.Dialect()
		if err == nil {
			if n, err := c.store.CountOutbox(ctx); err == nil {
				mu.Lock()
				r.Outbox = n
				mu.Unlock()
			}
		}
		mu.Lock()
		r.Postgres = chk
		mu.Unlock()
	})
	wg.Go(func() {
		start := time.Now()
		chk := c.timed("redis", start, c.rdb.Ping(ctx).Err())
		mu.Lock()
		r.Redis = chk
		mu.Unlock()
		if chk.Status != StatusOK {
			return
		}
		qs := c.queueStats(ctx)
		mu.Lock()
		r.Queues = qs
		mu.Unlock()
	})
	for _, name := range sortedServices(c.reg) {
		wg.Go(func() { c.adaptiveCheck(ctx, name, &mu, r.Services) })
		wg.Go(func() {
			n, err := c.sem.InUse(ctx, name)
			if err != nil {
				return
			}
			mu.Lock()
			sc := r.Services[name]
			sc.LeasesInUse = n
			r.Services[name] = sc
			mu.Unlock()
		})
		if c.reg.Services[name].MaxConcurrency > 0 {
			wg.Go(func() { c.waitingCheck(ctx, name, &mu, r.Services) })
		}
		if len(c.reg.Services[name].RateLimits) > 0 {
			wg.Go(func() { c.rateBudgetCheck(ctx, name, &mu, r.Services) })
		}
	}
	wg.Wait()
	r.Status = overall(r.Postgres.Status == StatusOK, r.Redis.Status == StatusOK, r.Services)
	return r
}

// queueStats reads the queues' statistics until ctx ends; queues not read by then are left out.
// asynq's inspector takes no context, so the reads finish in the background (within the Redis
// client's own timeouts) when ctx ends first.
func (c *Checker) queueStats(ctx context.Context) map[string]QueueCheck {
	var mu sync.Mutex
	out := map[string]QueueCheck{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, q := range c.queues {
			if ctx.Err() != nil {
				return
			}
			info, err := c.insp.GetQueueInfo(q)
			qc := QueueCheck{} // a queue nothing was enqueued on yet does not exist: all zero
			if err == nil {
				qc = QueueCheck{Pending: info.Pending, Active: info.Active, Scheduled: info.Scheduled, Retry: info.Retry, Archived: info.Archived, Paused: info.Paused}
			}
			mu.Lock()
			out[q] = qc
			mu.Unlock()
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	res := make(map[string]QueueCheck, len(out))
	for q, qc := range out {
		res[q] = qc
	}
	return res
}

// services returns every service's check from the probe results kept (leases in use not filled in).
func (c *Checker) services(now time.Time) map[string]ServiceCheck {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]ServiceCheck, len(c.reg.Services))
	for name, svc := range c.reg.Services {
		sc := ServiceCheck{Status: StatusOK, Kind: svc.Kind, MaxConcurrency: svc.MaxConcurrency, EffectiveLimit: svc.MaxConcurrency}
		if svc.Health != nil {
			res := c.results[name]
			sc.Probe, sc.ProbeSkipped = ProbePending, res.skipped
			if res.probed {
				at := res.at
				sc.Probe, sc.LatencyMS, sc.ProbedAt = ProbeOK, ms(res.latency), &at
				sc.ProbeAgeSeconds = max(0, now.Sub(at).Seconds())
				if !res.ok {
					sc.Status, sc.Probe, sc.Error = StatusDegraded, ProbeFailed, res.err
				}
			}
		}
		out[name] = sc
	}
	return out
}

// overall is the report's status: down without the database or Redis, degraded when a service's
// last probe failed, ok otherwise.
func overall(pg, rd bool, services map[string]ServiceCheck) string {
	if !pg || !rd {
		return StatusDown
	}
	for _, s := range services {
		if s.Status != StatusOK {
			return StatusDegraded
		}
	}
	return StatusOK
}

func sortedServices(reg *registry.Registry) []string {
	names := make([]string, 0, len(reg.Services))
	for n := range reg.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// timed is a backend's check; a failure is reported as Unreachable and its detail logged.
func (c *Checker) timed(name string, start time.Time, err error) Check {
	chk := Check{Status: StatusOK, LatencyMS: ms(time.Since(start))}
	if err != nil {
		c.logBackend(name, err)
		chk.Status, chk.Error = StatusDown, Unreachable
	}
	return chk
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

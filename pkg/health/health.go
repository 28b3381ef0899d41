// Package health reports whether CAO's dependencies answer: Postgres (or SQLite), Redis, the queues,
// and each registered service (its optional probe and its fleet-wide leases in use).
package health

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
)

// Overall statuses.
const (
	StatusOK       = "ok"
	StatusDegraded = "degraded"
	StatusDown     = "down"
)

// Check is the result of one dependency check.
type Check struct {
	Status    string  `json:"status"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"`
	Backend   string  `json:"backend,omitempty"`
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
	Status         string  `json:"status"`
	Kind           string  `json:"kind"`
	LeasesInUse    int     `json:"leases_in_use"`
	MaxConcurrency int     `json:"max_concurrency"` // 0: unlimited
	Probe          string  `json:"probe,omitempty"` // "ok", "failed" or "" when no probe is configured
	LatencyMS      float64 `json:"latency_ms,omitempty"`
	Error          string  `json:"error,omitempty"`
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

// Checker runs the checks.
type Checker struct {
	store  store.Store
	rdb    redis.UniversalClient
	insp   *asynq.Inspector
	reg    *registry.Registry
	sem    *limiter.Semaphore
	caller *caller.Caller
	queues []string
}

// NewChecker returns a checker over the process's dependencies.
func NewChecker(st store.Store, rdb redis.UniversalClient, reg *registry.Registry, sem *limiter.Semaphore, c *caller.Caller, queues []string) *Checker {
	return &Checker{store: st, rdb: rdb, insp: asynq.NewInspectorFromRedisClient(rdb), reg: reg, sem: sem, caller: c, queues: queues}
}

// Unavailable reports whether the database or Redis does not answer right now (within a second), so
// that a failed request can be answered 503 rather than 500.
func (c *Checker) Unavailable(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return c.store.Ping(ctx) != nil || c.rdb.Ping(ctx).Err() != nil
}

// Run performs every check concurrently within ctx (each bounded to a few seconds).
func (c *Checker) Run(ctx context.Context) Report {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r := Report{Queues: map[string]QueueCheck{}, Services: map[string]ServiceCheck{}, Checked: time.Now().UTC()}
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		err := c.store.Ping(ctx)
		chk := timed(start, err)
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
		chk := timed(start, c.rdb.Ping(ctx).Err())
		mu.Lock()
		r.Redis = chk
		mu.Unlock()
		if chk.Status != StatusOK {
			return
		}
		for _, q := range c.queues {
			info, err := c.insp.GetQueueInfo(q)
			qc := QueueCheck{}
			if err == nil {
				qc = QueueCheck{Pending: info.Pending, Active: info.Active, Scheduled: info.Scheduled, Retry: info.Retry, Archived: info.Archived, Paused: info.Paused}
			}
			mu.Lock()
			r.Queues[q] = qc
			mu.Unlock()
		}
	})
	for _, name := range sortedServices(c.reg) {
		svc := c.reg.Services[name]
		wg.Go(func() {
			sc := ServiceCheck{Status: StatusOK, Kind: svc.Kind, MaxConcurrency: svc.MaxConcurrency}
			if n, err := c.sem.InUse(ctx, svc.Name); err == nil {
				sc.LeasesInUse = n
			}
			if svc.Health != nil {
				start := time.Now()
				err := c.caller.Probe(ctx, svc)
				sc.LatencyMS = ms(time.Since(start))
				sc.Probe = "ok"
				if err != nil {
					sc.Status, sc.Probe, sc.Error = StatusDegraded, "failed", err.Error()
				}
			}
			mu.Lock()
			r.Services[svc.Name] = sc
			mu.Unlock()
		})
	}
	wg.Wait()
	r.Status = StatusOK
	for _, s := range r.Services {
		if s.Status != StatusOK {
			r.Status = StatusDegraded
		}
	}
	if r.Postgres.Status != StatusOK || r.Redis.Status != StatusOK {
		r.Status = StatusDown
	}
	return r
}

func sortedServices(reg *registry.Registry) []string {
	names := make([]string, 0, len(reg.Services))
	for n := range reg.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func timed(start time.Time, err error) Check {
	c := Check{Status: StatusOK, LatencyMS: ms(time.Since(start))}
	if err != nil {
		c.Status, c.Error = StatusDown, err.Error()
	}
	return c
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

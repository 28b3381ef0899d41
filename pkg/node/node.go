// Package node builds the dependencies every CAO process shares — registry, store, Redis client,
// orchestrator, outbox relay, maintenance, event hub, limiter, caller, metrics — once, from the
// configuration, and starts and stops them in order.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/fairness"
	"github.com/cao-run/cao/pkg/health"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/maintenance"
	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/redisconn"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/waits"
	"github.com/cao-run/cao/pkg/webhook"
)

// ProcessID names this process in leases, attempt records and logs: role-host-pid (role is api,
// worker or dev). Tests match worker ids with this shape.
func ProcessID(role string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%s-%d", role, host, os.Getpid())
}

// Node is one CAO process's shared dependencies.
type Node struct {
	Config       config.Config
	Logger       *slog.Logger
	ID           string
	Registry     *registry.Registry
	Store        store.Store
	Redis        redis.UniversalClient
	Queue        *asynq.Client
	Orchestrator *orchestrator.Orchestrator
	Relay        *dispatch.Relay
	Reconciler   *dispatch.Reconciler
	Maintainer   *maintenance.Maintainer
	Hub          *events.Hub
	Publisher    *events.RedisPublisher // the orchestrator's: Stop flushes it
	Semaphore    *limiter.Semaphore
	RateLimiter  *limiter.RateLimiter
	Caller       *caller.Caller
	Health       *health.Checker
	Metrics      *metrics.Metrics
	QueueDepth   *metrics.QueueSampler // cao_queue_depth, sampled in every process (same values everywhere)

	closers []func() error
	mu      sync.Mutex
	started bool
}

// Open connects to Postgres and Redis from cfg (migrating first when CAO_AUTO_MIGRATE is on), loads
// the registry and builds the node.
func Open(ctx context.Context, cfg config.Config, log *slog.Logger, id string) (*Node, error) {
	reg, err := registry.Load(cfg.RegistryPath)
	if err != nil {
		return nil, err
	}
	if cfg.AutoMigrate {
		if err := migrate.Up(ctx, "postgres", cfg.DatabaseURL); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
	}
	st, err := sqlstore.OpenPostgres(ctx, cfg.DatabaseURL, sqlstore.Config{
		MaxOpenConns: cfg.DBMaxConns, MaxIdleConns: cfg.DBMaxConns, Logger: log.With("component", "store"),
	})
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	// The first steps and requests after a start or a scale-up would otherwise each open a
	// connection of their own (sqlstore.Warm). Not fatal: connections also open as needed.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := st.Warm(wctx, cfg.DBMaxConns); err != nil {
		log.Warn("could not warm the database pool", "err", err)
	}
	cancel()
	// One server, a Redis Cluster or a Sentinel master (package redisconn): one client shared by all.
	conn, err := redisconn.Parse(cfg.RedisURL)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("CAO_REDIS_URL: %w", err)
	}
	rdb := conn.NewClient()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = st.Close()
		_ = rdb.Close()
		return nil, fmt.Errorf("redis at %s: %w", conn, err)
	}
	n := Build(cfg, log, id, reg, st, rdb)
	n.closers = append(n.closers, rdb.Close, st.Close)
	return n, nil
}

// Build wires a node over an open store and Redis client (which the caller keeps owning unless it
// adds them to the node's closers with OnClose).
func Build(cfg config.Config, log *slog.Logger, id string, reg *registry.Registry, st store.Store, rdb redis.UniversalClient) *Node {
	n := &Node{Config: cfg, Logger: log, ID: id, Registry: reg, Store: st, Redis: rdb}
	n.Queue = asynq.NewClientFromRedisClient(rdb)
	n.Semaphore = limiter.NewSemaphore(rdb, limiter.Config{})
	// Steps dispatched while their service has steps parked wait parked behind them (fairness).
	bell := dispatch.NewBell(rdb, log.With("component", "bell"))
	parker := fairness.New(limiter.FairQueueFor(n.Semaphore), n.Queue, rdb, reg, fairness.Config{
		Weights: cfg.TenantWeights, Logger: log.With("component", "relay"), Notes: waits.New(rdb, n.Semaphore.Prefix()), Bell: bell,
	})
	n.Relay = dispatch.NewRelay(st, rdb, n.Queue, dispatch.RelayConfig{Logger: log.With("component", "relay"), Route: parker.Route, Bell: bell})
	n.Hub = events.NewHub(rdb)
	n.Publisher = events.NewRedisPublisher(rdb, log.With("component", "events"))
	n.Orchestrator = orchestrator.New(st, reg, n.Publisher, n.Relay, orchestrator.Config{
		StepLeaseTTL:   cfg.StepLeaseTTL,
		StuckJobAfter:  cfg.StuckJobAfter,
		FailStuckAfter: cfg.FailStuckAfter,
		IdempotencyTTL: cfg.IdempotencyTTL,
		Webhooks:       cfg.WebhookHosts,
		Logger:         log.With("component", "orchestrator"),
		// n.Metrics is set below, before any change can commit.
		Hooks: orchestrator.Hooks{OnJobFinished: func(j store.Job) { n.Metrics.ObserveJobFinished(j) }},
	})
	n.Reconciler = dispatch.NewReconciler(st, rdb, n.Queue, dispatch.ReconcilerConfig{Logger: log.With("component", "reconciler")})
	n.Maintainer = maintenance.New(n.Orchestrator, n.Reconciler, rdb, maintenance.Config{
		ID: id, Retention: cfg.Retention, Logger: log.With("component", "maintenance"),
	})
	n.RateLimiter = limiter.NewRateLimiter(rdb, limiter.Config{})
	n.Caller = caller.New(caller.Config{})
	// The checker probes services in the background only once a process asks it for a report (the
	// API's /health/services) or starts it; Stop ends its loop.
	n.Health = health.NewChecker(st, rdb, reg, n.Semaphore, n.RateLimiter, n.Caller, reg.Queues(),
		health.Config{Logger: log.With("component", "health")})
	n.Metrics = metrics.New(func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, _ := st.CountOutbox(ctx)
		return float64(c)
	})
	n.Metrics.Registry.MustRegister(metrics.NewLeaseCollector(n.leases))
	n.Metrics.Registry.MustRegister(metrics.NewLimitCollector(n.limits))
	n.QueueDepth = n.Metrics.NewQueueSampler(rdb, reg.Queues(), metrics.QueueSamplerConfig{Logger: log.With("component", "metrics")})
	return n
}

// OnClose adds a function run by Stop after everything else stopped (closing pools, servers).
func (n *Node) OnClose(f func() error) { n.closers = append(n.closers, f) }

func (n *Node) leases() map[string][2]int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out := map[string][2]int{}
	for name, svc := range n.Registry.Services {
		used, _ := n.Semaphore.InUse(ctx, name)
		out[name] = [2]int{used, svc.MaxConcurrency}
	}
	return out
}

// NewRunner returns a worker runner over this node's dependencies.
func (n *Node) NewRunner(cfg runner.Config) *runner.Runner {
	if cfg.Logger == nil {
		cfg.Logger = n.Logger.With("component", "runner")
	}
	if cfg.WorkerID == "" {
		cfg.WorkerID = n.ID
	}
	if cfg.TenantWeights == nil {
		cfg.TenantWeights = n.Config.TenantWeights
	}
	if cfg.Services == nil {
		for _, name := range slices.Sorted(maps.Keys(n.Registry.Services)) {
			cfg.Services = append(cfg.Services, n.Registry.Services[name])
		}
	}
	if cfg.Hooks.OnAttempt == nil {
		cfg.Hooks.OnAttempt = n.Metrics.ObserveAttempt
	}
	if cfg.Hooks.OnBusy == nil {
		cfg.Hooks.OnBusy = func(service string) { n.Metrics.Busy.WithLabelValues(service).Inc() }
	}
	if cfg.Hooks.OnTask == nil {
		cfg.Hooks.OnTask = func(via string) { n.Metrics.StepTasks.WithLabelValues(via).Inc() }
	}
	if cfg.Hooks.OnWait == nil {
		cfg.Hooks.OnWait = n.Metrics.ObserveWait
	}
	return runner.New(n.Orchestrator, n.Redis, n.Semaphore, n.RateLimiter, n.Caller, cfg)
}

// NewDeliverer returns the completion-webhook deliverer workers run (nil when CAO_WEBHOOK_SECRET is
// not set: no job can then name a webhook_url, since the allow-list needs the secret).
func (n *Node) NewDeliverer() (*webhook.Deliverer, error) {
	if n.Config.WebhookSecret == "" {
		return nil, nil
	}
	return webhook.NewDeliverer(n.Store, webhook.Config{
		Secret: n.Config.WebhookSecret, Logger: n.Logger.With("component", "webhooks"),
	})
}

// Start pings the backends and starts the relay, the maintenance loop and the queue depth sampler.
// The event hub is started by the processes that serve watchers (StartHub).
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return nil
	}
	if err := n.Store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if err := n.Redis.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if err := n.Relay.Start(ctx); err != nil {
		return err
	}
	if err := n.Maintainer.Start(ctx); err != nil {
		return err
	}
	if err := n.QueueDepth.Start(ctx); err != nil {
		return err
	}
	n.started = true
	return nil
}

// StartHub starts the event hub: while a client watches a job through this process, it reads every
// job event of the deployment, to serve its WebSocket watchers (API replicas, dev mode). A worker
// does not start it: it follows only cancellations (events.ListenCancels). Node.Stop stops it. Safe
// to call twice.
func (n *Node) StartHub(ctx context.Context) error {
	return n.Hub.Start(ctx)
}

// Stop stops the loops in reverse order and closes what the node owns. Safe to call twice.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	// The health probe loop may run without Start (a report starts it): stop it first, always.
	errs := []error{n.Health.Stop(ctx)}
	if n.started {
		errs = append(errs, n.QueueDepth.Stop(ctx), n.Maintainer.Stop(ctx), n.Relay.Stop(ctx))
		n.started = false
	}
	errs = append(errs, n.Hub.Stop(ctx)) // started by StartHub, if at all
	// The last changes' events, before the Redis client closes (a failure is only logged: readers
	// find those events in the log).
	if err := n.Publisher.Flush(ctx); err != nil {
		n.Logger.Warn("send the last events", "err", err)
	}
	for _, c := range n.closers {
		errs = append(errs, c())
	}
	n.closers = nil
	return errors.Join(errs...)
}

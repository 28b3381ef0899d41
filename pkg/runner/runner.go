// Package runner is the worker side of CAO: an Asynq server that executes step tasks. For each task it
// takes a lease on the service's fleet-wide semaphore (and its key's, and its budgets), claims the step in the
// database, calls the service while heart-beating both leases, and records the outcome.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/fairness"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/waits"
)

// Config holds the runner's settings; zero values take the documented defaults.
type Config struct {
	// Queues maps queue names to priority weights. Default heavy=6, medium=3, default=1.
	Queues map[string]int
	// Concurrency is how many steps this process runs at once. Default 20.
	Concurrency int
	// WorkerID names this process in leases and attempt records; processes pass node.ProcessID.
	// Default host-pid-random.
	WorkerID string
	// ShutdownGrace is how long Stop lets running steps finish before interrupting them (they go back
	// to their queue without using an attempt). Default 30s.
	ShutdownGrace time.Duration
	// BusyDelay is the base delay before a step that could not wait in this process for its service
	// (the wait room was full, or the rate budget is far off) is tried again; it is jittered ±50%.
	// Default 1s.
	BusyDelay time.Duration
	// MaxRateWait is the longest a step waits in this process for its service's rate budget; past it
	// the step goes back to its queue until the budget is due. Default 2s.
	MaxRateWait time.Duration
	// PollInterval is how often Asynq moves due scheduled and retry tasks to their queues (Asynq
	// schedules in whole seconds anyway). Default 500ms.
	PollInterval time.Duration
	// IdlePoll is how long an idle worker waits (on average; Asynq jitters it ±50%) before looking at
	// its empty queues again, at the cost of one Redis call per poll. Steps dispatched or handed out
	// are started at once through the bell (bell.go); it bounds the delay before the other tasks
	// start on an idle system (retries and waiting steps falling due, tasks the relay or the
	// reconciler send again). It also bounds how long Stop may wait for Asynq's sleeping poll.
	// Default DefaultIdlePoll (Asynq's own is 1s).
	IdlePoll time.Duration
	// ParkFallback is when the copy of a parked step's task runs by itself if the step's turn in its
	// service's fair queue has not come by then (its entry was lost). Default fairness.DefaultFallback.
	ParkFallback time.Duration
	// TenantWeights are the tenants' shares of a saturated service (CAO_TENANT_WEIGHTS); a tenant
	// not listed weighs 1.
	TenantWeights map[string]int
	// Services are the registry's services: the worker checks those with a max_concurrency for
	// parked steps that free slots could serve (a lost hand-out).
	Services []*registry.Service
	// Now is the clock of the lease checks (a lease is surely held only while, by this clock, less
	// than its TTL passed since it was last taken or renewed); the Semaphore's Config.Now, which
	// stamps a slot's Lease.RequestedAt, must be the same clock. Default time.Now.
	Now func() time.Time
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
	// Hooks observe the runner (metrics, tests). Optional.
	Hooks Hooks
}

// Hooks are optional callbacks fired by the runner.
type Hooks struct {
	// OnBusy is called when a step is requeued because its service (or its key) is full or out of budget.
	OnBusy func(service string)
	// OnAttempt is called after an attempt finished, with its outcome.
	OnAttempt func(service string, out orchestrator.Outcome, d time.Duration)
	// OnTask is called when a handler takes a step task, with how it got it: ViaBell or ViaPoll.
	OnTask func(via string)
	// OnWait is called when a step was admitted to its service, with how long it waited in this
	// worker for a slot (reason WaitSlot, services with max_concurrency), for a slot of its key
	// value (reason WaitKey, with concurrency_key) and for its budgets (reason WaitRateBudget,
	// services with rate_limit or rate_limits); zero when it found room at once.
	OnWait func(service, reason string, d time.Duration)
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if len(c.Queues) == 0 {
		c.Queues = DefaultQueues()
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		c.WorkerID = fmt.Sprintf("%s-%d-%04x", host, os.Getpid(), rand.IntN(1<<16))
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.BusyDelay <= 0 {
		c.BusyDelay = DefaultBusyDelay
	}
	if c.MaxRateWait <= 0 {
		c.MaxRateWait = DefaultMaxRateWait
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.IdlePoll <= 0 {
		c.IdlePoll = DefaultIdlePoll
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Defaults of Config.
const (
	DefaultIdlePoll      = 100 * time.Millisecond
	DefaultConcurrency   = 20
	DefaultShutdownGrace = 30 * time.Second
	DefaultBusyDelay     = time.Second
	DefaultPollInterval  = 500 * time.Millisecond
)

// DefaultQueues returns Config.Queues' default: heavy=6, medium=3, default=1.
func DefaultQueues() map[string]int { return map[string]int{"heavy": 6, "medium": 3, "default": 1} }

// errShutdown is the cancellation cause of calls interrupted by Stop.
var errShutdown = errors.New("worker shutting down")

// Runner executes step tasks.
type Runner struct {
	orch   *orchestrator.Orchestrator
	rdb    redis.UniversalClient
	sem    *limiter.Semaphore
	room   *limiter.WaitRoom
	rate   *limiter.Budgets  // rate_limit and rate_limits, on rate's Redis and prefix
	adapt  *limiter.Adaptive // holds and adaptive limits, on sem's Redis and prefix
	parker *fairness.Parker  // parks steps while their service is saturated, hands them out fairly
	caller *caller.Caller
	queue  *asynq.Client // schedules the copies of tasks that wait for their service
	insp   *asynq.Inspector
	cfg    Config

	slots    slots         // the handlers, shared by Asynq and the bell
	deferred deferredRings // rings waiting for a free handler

	inflightMu sync.Mutex                       // guards inflight only: cancelJob takes it while Start may hold mu
	inflight   map[string]map[*running]struct{} // by job id, the calls running (track)

	mu        sync.Mutex
	srv       *asynq.Server
	runCtx    context.Context
	stopRun   context.CancelCauseFunc
	admitCtx  context.Context // ends when Stop begins: steps still waiting for their service give up
	stopAdmit context.CancelCauseFunc
	wg        sync.WaitGroup
	cancels   *events.CancelListener // nil if it could not subscribe: cancellations then reach calls through their heartbeats
	bell      *dispatch.BellListener
	owners    *dispatch.RingOwners // which rings this worker answers
	ringer    *dispatch.Bell       // rings handed-out steps, and passes on rings this worker cannot answer
	bellDone  chan struct{}
	sweepDone chan struct{}
}

// New returns a runner.
func New(orch *orchestrator.Orchestrator, rdb redis.UniversalClient, sem *limiter.Semaphore, rate *limiter.RateLimiter,
	c *caller.Caller, cfg Config) *Runner {
	cfg = cfg.WithDefaults()
	queue := asynq.NewClientFromRedisClient(rdb)
	ringer := dispatch.NewBell(rdb, cfg.Logger)
	return &Runner{
		orch: orch, rdb: rdb, sem: sem, rate: limiter.BudgetsFor(rate), caller: c, cfg: cfg, adapt: limiter.AdaptiveFor(sem),
		parker: fairness.New(limiter.FairQueueFor(sem), queue, rdb, nil, fairness.Config{
			Weights: cfg.TenantWeights, Fallback: cfg.ParkFallback, Now: cfg.Now, Logger: cfg.Logger, Notes: waits.New(rdb, sem.Prefix()),
			Bell: ringer,
		}),
		ringer:   ringer,
		queue:    queue,
		insp:     asynq.NewInspectorFromRedisClient(rdb),
		slots:    make(slots, cfg.Concurrency),
		room:     limiter.NewWaitRoom(sem, limiter.WaitRoomConfig{ID: cfg.WorkerID}),
		inflight: map[string]map[*running]struct{}{},
	}
}

// Start begins pulling tasks from the configured queues. Safe to call twice.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return nil
	}
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("runner: redis: %w", err)
	}
	srv := asynq.NewServerFromRedisClient(r.rdb, asynq.Config{
		Concurrency:              r.cfg.Concurrency,
		Queues:                   r.cfg.Queues,
		IsFailure:                isFailure,
		RetryDelayFunc:           retryDelay,
		ShutdownTimeout:          r.cfg.ShutdownGrace + 15*time.Second,
		DelayedTaskCheckInterval: r.cfg.PollInterval,
		TaskCheckInterval:        r.cfg.IdlePoll,
		Logger:                   asynqLogger{r.cfg.Logger},
		LogLevel:                 asynq.WarnLevel,
	})
	// Calls outlive the start request; Stop cancels them after the grace period.
	r.runCtx, r.stopRun = context.WithCancelCause(context.WithoutCancel(ctx))
	r.admitCtx, r.stopAdmit = context.WithCancelCause(r.runCtx)
	if err := r.room.Start(ctx); err != nil {
		r.stopRun(err)
		return fmt.Errorf("runner: %w", err)
	}
	if l, err := events.ListenCancels(ctx, r.rdb, r.cfg.Logger, r.cancelJob); err != nil {
		// Cancellations still reach running calls, through their heartbeats.
		r.cfg.Logger.Warn("worker does not hear cancellations", "err", err)
	} else {
		r.cancels = l
	}
	if l, err := dispatch.ListenBell(ctx, r.rdb, 64, r.cfg.Logger); err != nil {
		// Steps still start, at the next poll of their queue.
		r.cfg.Logger.Warn("worker does not answer the bell", "err", err)
	} else {
		// Listening first: a worker listed among the listeners owns a share of the rings.
		r.owners = dispatch.NewRingOwners(r.rdb, r.cfg.WorkerID, slices.Collect(maps.Keys(r.cfg.Queues)), r.cfg.Logger)
		_ = r.owners.Start(ctx)
		r.bell, r.bellDone = l, make(chan struct{})
		go func() { defer close(r.bellDone); r.answerBell(l) }()
	}
	mux := asynq.NewServeMux()
	mux.HandleFunc(task.TypeStep, r.handle)
	if err := srv.Start(mux); err != nil {
		r.stopRun(err)
		_ = r.room.Stop(ctx)
		if r.owners != nil {
			_ = r.owners.Stop(ctx)
		}
		if r.cancels != nil {
			r.cancels.Close()
		}
		return fmt.Errorf("runner: start asynq server: %w", err)
	}
	r.srv = srv
	r.sweepDone = make(chan struct{})
	go func() { defer close(r.sweepDone); r.sweepParked(r.admitCtx) }()
	r.cfg.Logger.Info("worker started", "worker_id", r.cfg.WorkerID, "queues", r.cfg.Queues, "concurrency", r.cfg.Concurrency)
	return nil
}

// Stop stops intake, lets running steps finish within the grace period (or ctx), interrupts the rest
// (they are put back without using an attempt) and shuts the Asynq server down. Safe to call twice.
func (r *Runner) Stop(ctx context.Context) error {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv == nil {
		return nil
	}
	// No new work from here: steps waiting for their service give up, none is continued.
	r.stopAdmit(errShutdown)
	<-r.sweepDone
	if r.owners != nil {
		// The other workers answer this one's share of the rings from now on.
		if err := r.owners.Stop(ctx); err != nil {
			r.cfg.Logger.Debug("leave the bell's listeners", "err", err)
		}
	}
	if r.bell != nil {
		r.bell.Close()
		<-r.bellDone // no handler starts for the bell after this
	}
	srv.Stop() // no new tasks
	finished := make(chan struct{})
	go func() { r.wg.Wait(); close(finished) }()
	grace := time.NewTimer(r.cfg.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-finished:
	case <-grace.C:
	case <-ctx.Done():
	}
	r.stopRun(errShutdown)
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		r.cfg.Logger.Warn("steps still recording their outcome after shutdown")
	}
	srv.Shutdown()
	_ = r.room.Stop(ctx)
	if r.cancels != nil {
		r.cancels.Close()
	}
	r.cfg.Logger.Info("worker stopped", "worker_id", r.cfg.WorkerID)
	return nil
}

// Package runner is the worker side of CAO: an Asynq server that executes step tasks. For each task it
// takes a lease on the service's fleet-wide semaphore (and rate budget), claims the step in the
// database, calls the service while heart-beating both leases, and records the outcome.
package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/backoff"
	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// Config holds the runner's settings; zero values take the documented defaults.
type Config struct {
	// Queues maps queue names to priority weights. Default heavy=6, medium=3, default=1.
	Queues map[string]int
	// Concurrency is how many steps this process runs at once. Default 20.
	Concurrency int
	// WorkerID names this process in leases and attempt records. Default host-pid-random.
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
	// its empty queues again: it bounds the delay before a step enqueued on an idle system starts, and
	// costs one Redis call per poll. Default DefaultIdlePoll (Asynq's own is 1s).
	IdlePoll time.Duration
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
	// Hooks observe the runner (metrics, tests). Optional.
	Hooks Hooks
}

// Hooks are optional callbacks fired by the runner.
type Hooks struct {
	// OnBusy is called when a step is requeued because its service is full or rate limited.
	OnBusy func(service string)
	// OnAttempt is called after an attempt finished, with its outcome.
	OnAttempt func(service string, out orchestrator.Outcome, d time.Duration)
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if len(c.Queues) == 0 {
		c.Queues = map[string]int{"heavy": 6, "medium": 3, "default": 1}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 20
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		c.WorkerID = fmt.Sprintf("%s-%d-%04x", host, os.Getpid(), rand.IntN(1<<16))
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.BusyDelay <= 0 {
		c.BusyDelay = time.Second
	}
	if c.MaxRateWait <= 0 {
		c.MaxRateWait = DefaultMaxRateWait
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.IdlePoll <= 0 {
		c.IdlePoll = DefaultIdlePoll
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// DefaultIdlePoll is Config.IdlePoll's default.
const DefaultIdlePoll = 20 * time.Millisecond

// errShutdown is the cancellation cause of calls interrupted by Stop.
var errShutdown = errors.New("worker shutting down")

// errJobCancelled is the cancellation cause of calls whose job was cancelled.
var errJobCancelled = errors.New("job cancelled")

// busyError asks Asynq to try the task again after delay without counting a failure.
type busyError struct {
	service string
	delay   time.Duration
	why     string
}

func (e *busyError) Error() string {
	return fmt.Sprintf("service %s %s; retry in %s", e.service, e.why, e.delay)
}

// Runner executes step tasks.
type Runner struct {
	orch   *orchestrator.Orchestrator
	rdb    redis.UniversalClient
	sem    *limiter.Semaphore
	room   *limiter.WaitRoom
	rate   *limiter.RateLimiter
	caller *caller.Caller
	hub    *events.Hub
	cfg    Config

	mu        sync.Mutex
	srv       *asynq.Server
	runCtx    context.Context
	stopRun   context.CancelCauseFunc
	admitCtx  context.Context // ends when Stop begins: steps still waiting for their service give up
	stopAdmit context.CancelCauseFunc
	inflight  map[string]map[*running]struct{} // by job id
	wg        sync.WaitGroup
	cancelSub *events.Subscription
	subDone   chan struct{}
}

type running struct {
	cancel context.CancelCauseFunc
}

// New returns a runner. hub may be nil (cancellation then reaches running calls through their
// heartbeats only).
func New(orch *orchestrator.Orchestrator, rdb redis.UniversalClient, sem *limiter.Semaphore, rate *limiter.RateLimiter,
	c *caller.Caller, hub *events.Hub, cfg Config) *Runner {
	cfg = cfg.WithDefaults()
	return &Runner{
		orch: orch, rdb: rdb, sem: sem, rate: rate, caller: c, hub: hub, cfg: cfg,
		room:     limiter.NewWaitRoom(sem, limiter.WaitRoomConfig{ID: cfg.WorkerID}),
		inflight: map[string]map[*running]struct{}{},
	}
}

// WorkerID returns this runner's worker id.
func (r *Runner) WorkerID() string { return r.cfg.WorkerID }

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
	if r.hub != nil {
		r.cancelSub = r.hub.SubscribeAll(4096)
		r.subDone = make(chan struct{})
		go r.watchCancels(r.cancelSub)
	}
	mux := asynq.NewServeMux()
	mux.HandleFunc(task.TypeStep, r.handle)
	if err := srv.Start(mux); err != nil {
		r.stopRun(err)
		_ = r.room.Stop(ctx)
		return fmt.Errorf("runner: start asynq server: %w", err)
	}
	r.srv = srv
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
	if r.cancelSub != nil {
		r.cancelSub.Close()
		<-r.subDone
	}
	r.cfg.Logger.Info("worker stopped", "worker_id", r.cfg.WorkerID)
	return nil
}

// watchCancels cancels running calls of jobs that get cancelled, wherever the cancel was requested.
func (r *Runner) watchCancels(sub *events.Subscription) {
	defer close(r.subDone)
	for {
		for m := range sub.C {
			if m.Type == store.EventJob && m.Status == string(store.JobCancelled) {
				r.cancelJob(m.JobID)
			}
		}
		// Closed: either Stop, or the subscriber overflowed (heartbeats still fence); resubscribe.
		if !sub.Overflowed() {
			return
		}
		r.mu.Lock()
		if r.srv == nil {
			r.mu.Unlock()
			return
		}
		sub = r.hub.SubscribeAll(4096)
		r.cancelSub = sub
		r.mu.Unlock()
	}
}

func (r *Runner) cancelJob(jobID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for run := range r.inflight[jobID] {
		run.cancel(errJobCancelled)
	}
}

func (r *Runner) track(jobID string, run *running) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.inflight[jobID]
	if m == nil {
		m = map[*running]struct{}{}
		r.inflight[jobID] = m
	}
	m[run] = struct{}{}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(m, run)
		if len(m) == 0 {
			delete(r.inflight, jobID)
		}
	}
}

func isFailure(err error) bool {
	var b *busyError
	return !errors.As(err, &b)
}

// retryDelay is Asynq's delay before retrying a task: the requested delay for busy services, and for
// infrastructure errors (database or Redis unreachable) 1s doubling to at most 30s, ±50%, so work
// resumes soon after an outage without hammering a recovering database.
func retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var b *busyError
	if errors.As(err, &b) {
		return b.delay
	}
	d := time.Second << min(n, 5)
	return backoff.Jitter(min(d, 30*time.Second), 0.5, rand.Float64)
}

// handle runs one step task. Returning nil acknowledges it; a busyError requeues it without counting
// a failure; other errors (database or Redis unreachable) let Asynq retry it later.
func (r *Runner) handle(ctx context.Context, t *asynq.Task) error {
	p, err := task.ParseStepPayload(t.Payload())
	if err != nil {
		r.cfg.Logger.Error("drop malformed step task", "err", err)
		return fmt.Errorf("%w: %v", asynq.SkipRetry, err)
	}
	r.wg.Add(1)
	defer r.wg.Done()
	log := r.cfg.Logger.With("job_id", p.JobID, "step", p.Step, "run", p.Run, "attempt", p.Attempt)

	if r.admitCtx.Err() != nil {
		// Stop began after Asynq handed this task out: a step that has not started is not started
		// now. The task goes back to its queue for another worker, without using an attempt.
		return &busyError{service: "(any)", delay: backoff.Jitter(r.cfg.BusyDelay, 0.5, rand.Float64), why: "is not called: the worker is stopping"}
	}
	target, err := r.orch.Resolve(ctx, p)
	if errors.Is(err, orchestrator.ErrStale) {
		log.Debug("stale step task acknowledged", "reason", err)
		return nil
	}
	if err != nil {
		return err
	}
	svc := target.Service

	// Waiting for the service ends when the task's context does or as soon as Stop begins: a step
	// that has not started has nothing to finish.
	admitCtx, stopAdmit := context.WithCancelCause(ctx)
	stopWait := context.AfterFunc(r.admitCtx, func() { stopAdmit(context.Cause(r.admitCtx)) })
	adm, err := r.admit(admitCtx, svc)
	stopWait()
	stopAdmit(nil)
	if err != nil {
		return err
	}
	lease, rsv, semAt := adm.lease, adm.rsv, adm.semAt
	// The slot is held until the outcome is recorded, so a service never shows more RUNNING steps
	// than its max_concurrency; recording is one statement.
	held := true
	release := func() {
		if held {
			held = false
			r.release(ctx, lease)
		}
	}
	defer release()

	stepAt := time.Now() // the step's lease counts from no later than this
	a, err := r.orch.StartAttempt(ctx, target, r.cfg.WorkerID)
	if errors.Is(err, orchestrator.ErrStale) {
		return nil
	}
	if err != nil {
		return err
	}
	clock := &leaseClock{stepOK: stepAt, stepTTL: r.orch.Config().StepLeaseTTL, semOK: semAt, semTTL: svc.LeaseTTL, sem: lease.Token != 0}
	for continued := false; ; continued = true {
		var (
			out orchestrator.Outcome
			dur time.Duration
		)
		if continued && r.admitCtx.Err() != nil {
			// Stopping: a step claimed by continuation has not started; put it back.
			out = orchestrator.Outcome{Err: errShutdown, ErrorClass: "interrupted", Interrupted: true}
		} else {
			out, dur = r.execute(ctx, a, lease, rsv, clock)
		}
		// Record even if the task's context ended: the outcome is what matters now. A step this
		// records as ready may be claimed for this handler in the same statement (continued).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		recordAt := time.Now() // a continued step's lease counts from no later than this
		next, err := r.finish(rctx, a, out)
		cancel()
		release()
		if r.cfg.Hooks.OnAttempt != nil {
			r.cfg.Hooks.OnAttempt(a.Service.Name, out, dur)
		}
		switch {
		case errors.Is(err, orchestrator.ErrFenced):
			log.Info("late result rejected: the attempt no longer owns the step")
			return nil
		case err != nil:
			// The database did not take the result; the step's lease will expire and it is re-run in
			// the same run (same Idempotency-Key), so nothing is lost.
			log.Error("record outcome", "err", err)
			return nil
		case next == nil:
			return nil
		}
		// Continued: the next step's service takes no slot or budget (see continueWith).
		a, lease, rsv = next, limiter.Lease{Name: next.Service.Name}, limiter.Reservation{}
		clock = &leaseClock{stepOK: recordAt, stepTTL: r.orch.Config().StepLeaseTTL}
		log = r.cfg.Logger.With("job_id", a.Payload.JobID, "step", a.Payload.Step, "run", a.Payload.Run, "attempt", a.Payload.Attempt)
	}
}

// continues reports whether this worker runs step st of service svc right after the step it
// finished, instead of queueing it: only when the service needs no slot or rate budget (admission
// would otherwise have to wait with the step already claimed), this worker serves the step's queue,
// and the worker is not stopping.
func (r *Runner) continues(st *registry.Step, svc *registry.Service) bool {
	if svc.MaxConcurrency > 0 || svc.RateLimit != nil || r.admitCtx.Err() != nil {
		return false
	}
	_, ok := r.cfg.Queues[st.Queue]
	return ok
}

// finish records the outcome, retrying while the database is unreachable (until ctx ends): a result
// that is not recorded makes the step run again after its lease expires.
func (r *Runner) finish(ctx context.Context, a *orchestrator.Attempt, out orchestrator.Outcome) (*orchestrator.Attempt, error) {
	wait := 200 * time.Millisecond
	for {
		next, err := r.orch.FinishAndContinue(ctx, a, out, r.continues)
		if err == nil || errors.Is(err, orchestrator.ErrFenced) || !errors.Is(err, store.ErrUnavailable) {
			return next, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func (r *Runner) busy(service, why string, wait time.Duration) error {
	if r.cfg.Hooks.OnBusy != nil {
		r.cfg.Hooks.OnBusy(service)
	}
	d := backoff.Jitter(r.cfg.BusyDelay, 0.5, rand.Float64)
	if wait > d {
		d = wait + backoff.Jitter(100*time.Millisecond, 1, rand.Float64)
	}
	return &busyError{service: service, delay: d, why: why}
}

// execute calls the service while keeping both leases alive; losing either cancels the call. rsv is
// the call's rate limit reservation (zero when the service has no rate limit).
func (r *Runner) execute(ctx context.Context, a *orchestrator.Attempt, lease limiter.Lease, rsv limiter.Reservation, clock *leaseClock) (orchestrator.Outcome, time.Duration) {
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopMerge := context.AfterFunc(r.runCtx, func() { cancel(context.Cause(r.runCtx)) })
	defer stopMerge()
	untrack := r.track(a.Payload.JobID, &running{cancel: cancel})
	defer untrack()

	hbDone := make(chan struct{})
	hbStopped := make(chan struct{})
	go func() {
		defer close(hbStopped)
		r.heartbeat(callCtx, a, lease, clock, cancel, hbDone)
	}()
	defer func() { close(hbDone); <-hbStopped }()

	data, err := templateData(a)
	if err != nil {
		return orchestrator.Outcome{Err: err, ErrorClass: "template"}, 0
	}
	// The budget was taken before the attempt was recorded, which takes a variable time: space this
	// call from the others by when it leaves, not by when it was admitted.
	if err := r.rate.Sent(callCtx, rsv); err != nil {
		r.cfg.Logger.Warn("rate limit: record send time", "service", a.Service.Name, "err", err)
	}
	// The process may have been stopped (SIGSTOP, VM freeze) since it took its leases, and the
	// heartbeat may not have noticed yet: never send on a lease that may belong to someone else now.
	if !clock.valid(time.Now()) {
		err := fmt.Errorf("%w: lease expired before the call was sent", limiter.ErrLeaseLost)
		return orchestrator.Outcome{Err: err, ErrorClass: "lease_lost", Interrupted: true}, 0
	}
	start := time.Now()
	res, err := r.caller.Call(callCtx, caller.Call{
		JobID: a.Payload.JobID, Step: a.Step, Service: a.Service, Run: a.Payload.Run, Attempt: a.Payload.Attempt,
		IdempotencyKey: task.IdempotencyKey(a.Payload.JobID, a.Payload.Step, a.Payload.Run), Data: data,
	})
	dur := time.Since(start)
	if err == nil {
		return orchestrator.Outcome{Output: res.Output, HTTPStatus: res.HTTPStatus}, dur
	}
	out := orchestrator.Outcome{Err: err, ErrorClass: "internal"}
	var ce *caller.Error
	if errors.As(err, &ce) {
		out.ErrorClass, out.Retryable, out.RetryAfter, out.HTTPStatus = ce.Class, ce.Retryable, ce.RetryAfter, ce.HTTPStatus
	}
	if cause := context.Cause(callCtx); callCtx.Err() != nil &&
		(errors.Is(cause, errShutdown) || errors.Is(cause, limiter.ErrLeaseLost)) {
		// Abandoned by this worker (shutdown, or a lease it could not keep: the step was reclaimed,
		// Redis lost the service slot, the database was unreachable past the lease) rather than failed
		// by the service: put the step back without using an attempt. A reclaimed step fences it.
		out.Interrupted = true
	}
	return out, dur
}

// heartbeat renews the step's database lease and the service semaphore lease about every third of
// their TTLs; if either is lost (or cannot be renewed before it expires) the call is cancelled.
func (r *Runner) heartbeat(ctx context.Context, a *orchestrator.Attempt, lease limiter.Lease, clock *leaseClock, cancel context.CancelCauseFunc, done <-chan struct{}) {
	stepTTL, semTTL := clock.stepTTL, clock.semTTL
	interval := stepTTL / 3
	if clock.sem {
		interval = min(interval, semTTL/3)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		// A process that was stopped (SIGSTOP, GC pause, VM freeze) must not act on a lease that may
		// already belong to someone else: give up before sending anything more.
		if !clock.valid(now) {
			cancel(fmt.Errorf("%w: lease expired before it could be renewed", limiter.ErrLeaseLost))
			return
		}
		hctx, hcancel := context.WithTimeout(ctx, interval)
		err := r.orch.Heartbeat(hctx, a)
		hcancel()
		switch {
		case errors.Is(err, orchestrator.ErrFenced):
			cancel(fmt.Errorf("%w: step reclaimed or cancelled", limiter.ErrLeaseLost))
			return
		case err == nil:
			clock.renewed(now, false)
		}
		if lease.Token != 0 {
			hctx, hcancel := context.WithTimeout(ctx, interval)
			nl, err := r.sem.Renew(hctx, lease, semTTL)
			hcancel()
			switch {
			case errors.Is(err, limiter.ErrLeaseLost):
				cancel(fmt.Errorf("%w: service slot lost", limiter.ErrLeaseLost))
				return
			case err == nil:
				lease = nl
				clock.renewed(now, true)
			}
		}
	}
}

// leaseClock tracks, by this process's clock, whether the attempt's leases are surely still held: each
// counts from a moment just before it was last taken or renewed.
type leaseClock struct {
	mu              sync.Mutex
	stepOK, semOK   time.Time
	stepTTL, semTTL time.Duration
	sem             bool // a semaphore lease is held (the service has a max_concurrency)
}

// valid reports whether both leases are still held at now.
func (c *leaseClock) valid(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return now.Sub(c.stepOK) < c.stepTTL && (!c.sem || now.Sub(c.semOK) < c.semTTL)
}

// renewed records a successful renewal of the step lease (sem=false) or the service slot (sem=true)
// requested at t.
func (c *leaseClock) renewed(t time.Time, sem bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sem {
		c.semOK = t
	} else {
		c.stepOK = t
	}
}

// templateData builds the template data of an attempt: input, outputs of succeeded steps, ids.
func templateData(a *orchestrator.Attempt) (render.Data, error) {
	d := render.Data{JobID: a.Payload.JobID, StepName: a.Payload.Step, Attempt: a.Payload.Attempt, Run: a.Payload.Run,
		Steps: make(map[string]any, len(a.Outputs))}
	var err error
	if d.Input, err = decode(a.Input); err != nil {
		return d, fmt.Errorf("decode job input: %w", err)
	}
	for name, out := range a.Outputs {
		v, err := decode(out)
		if err != nil {
			return d, fmt.Errorf("decode output of step %s: %w", name, err)
		}
		d.Steps[name] = v
	}
	return d, nil
}

func decode(b json.RawMessage) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// asynqLogger adapts slog to Asynq's logger interface.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)); os.Exit(1) }

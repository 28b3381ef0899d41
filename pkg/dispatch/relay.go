// Package dispatch keeps Redis in agreement with Postgres: the relay moves committed outbox tasks into
// Asynq, and the reconciler re-enqueues waiting steps whose tasks Redis lost (restart without
// persistence, FLUSHALL, archived tasks). Task ids are deterministic, so enqueueing twice is harmless.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/startstop"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// TaskMaxRetry is the Asynq retry budget of step tasks. CAO counts attempts in the database; Asynq
// retries only infrastructure failures (database unreachable) and "service busy" requeues, which
// do not consume this budget.
const TaskMaxRetry = 25

// Relay defaults.
const (
	// DefaultRelayPoll is RelayConfig.PollInterval's default.
	DefaultRelayPoll = time.Second
	// DefaultRelayMinAge is RelayConfig.MinAge's default.
	DefaultRelayMinAge = 2 * time.Second
	// DefaultDeleteDelay is RelayConfig.DeleteDelay's default.
	DefaultDeleteDelay = 100 * time.Millisecond
)

// RelayConfig tunes the relay; zero values take the defaults.
type RelayConfig struct {
	PollInterval time.Duration // how often to look for tasks without a wake-up; default 1s
	BatchSize    int           // tasks per transaction; default 100
	// MinAge is how old an outbox task must be before the relay sends it: younger ones are being
	// dispatched by the process that committed them (Dispatch). Default 2s.
	MinAge time.Duration
	// DeleteDelay is how long Dispatch gathers the ids of enqueued tasks before it deletes their
	// outbox rows in one statement. Default 100ms.
	DeleteDelay time.Duration
	// Now is the clock that ages outbox rows. Default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// Route, when set, may change a task Dispatch is about to enqueue (a step of a saturated service
	// waits parked: see package fairness) and return what to do once it is enqueued. Optional.
	Route Route
	// Bell, when set, rings for every task Dispatch enqueues to run now, so that an idle worker
	// starts it at once instead of at its next poll. Optional.
	Bell *Bell
}

// Route decides how a committed task is enqueued: it returns the task to enqueue and, optionally, a
// function to run once it is in the queue.
type Route func(ctx context.Context, t store.OutboxTask) (store.OutboxTask, func(context.Context))

func (c RelayConfig) withDefaults() RelayConfig {
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultRelayPoll
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 100
	}
	if c.MinAge <= 0 {
		c.MinAge = DefaultRelayMinAge
	}
	if c.DeleteDelay <= 0 {
		c.DeleteDelay = DefaultDeleteDelay
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Enqueuer is the part of *asynq.Client the relay uses.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Relay moves outbox tasks into Asynq. The process that commits a task hands it to its relay
// (Dispatch), which enqueues it at once, with the tasks other changes hand over meanwhile in one
// round trip, and deletes its outbox row soon after, batched with others; the relay loop sends what
// such a process left behind (it crashed, or Redis was unreachable), so every committed task reaches
// the queue. Every process that writes state runs one; concurrent relays skip each other's rows.
type Relay struct {
	store store.Store
	rdb   redis.UniversalClient
	q     Enqueuer
	cfg   RelayConfig
	wake  chan struct{}

	life startstop.Loop

	mu        sync.Mutex
	enqueued  int64
	accepting bool               // the sender runs: Dispatch hands tasks over to it
	queued    []store.OutboxTask // tasks handed over and not yet sent
	handed    chan struct{}      // wakes the sender
	sent      []int64            // ids of dispatched tasks whose rows wait to be deleted
	flush     chan struct{}      // wakes the deleter
}

// maxQueued bounds the tasks waiting for the sender; a caller that finds it full enqueues its own
// tasks (and so waits as long as Redis is behind). maxSend bounds the tasks of one round trip.
const (
	maxQueued = 4096
	maxSend   = 512
)

// NewRelay returns a relay enqueueing into Asynq on rdb (q schedules the tasks that wait for a time);
// call Start to run it.
func NewRelay(st store.Store, rdb redis.UniversalClient, q Enqueuer, cfg RelayConfig) *Relay {
	return &Relay{
		store: st, rdb: rdb, q: q, cfg: cfg.withDefaults(),
		wake: make(chan struct{}, 1), handed: make(chan struct{}, 1), flush: make(chan struct{}, 1),
	}
}

// Notify wakes the relay after a commit that added outbox rows. It never blocks.
func (r *Relay) Notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Start runs the relay loop, the sender of dispatched tasks and the deleter of their rows until
// Stop. Safe to call twice.
func (r *Relay) Start(ctx context.Context) error {
	r.life.Start(ctx, func(ctx context.Context) {
		r.mu.Lock()
		r.accepting = true
		r.mu.Unlock()
		sent := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { r.loop(ctx) })
		wg.Go(func() {
			defer close(sent)
			r.sender(ctx)
		})
		wg.Go(func() { r.deleter(ctx, sent) })
		wg.Wait()
	})
	return nil
}

// Stop ends the loop after the current batch, sends the tasks handed over so far and deletes the
// rows of those dispatched. Safe to call twice.
func (r *Relay) Stop(ctx context.Context) error {
	_, err := r.life.Stop(ctx)
	return err
}

// Dispatch hands over the tasks of a change that was just committed. While the relay runs, its
// sender enqueues them and the caller does not wait for Redis; otherwise, or when maxQueued tasks
// wait already, the caller enqueues them itself. Their outbox rows are deleted soon after. A task
// that cannot be enqueued stays in the outbox for the relay loop.
//
// The caller routes the tasks (RelayConfig.Route) and sends itself those Route parks (a step of a
// saturated service, behind the steps that wait for it): parking takes a few round trips per task,
// and one sender would take them one after the other, so that every task dispatched after a
// backlog of parked ones would wait for all of them (a tenant's first step behind another's 2,000,
// session 14). Routing a task of a service without max_concurrency costs nothing.
func (r *Relay) Dispatch(ctx context.Context, tasks []store.OutboxTask) {
	if len(tasks) == 0 {
		return
	}
	tasks = slices.Clone(tasks) // routing and sending change them; the caller's stay as they are
	after := r.route(ctx, tasks)
	if !slices.ContainsFunc(after, func(f func(context.Context)) bool { return f != nil }) {
		after = nil
		r.mu.Lock()
		if r.accepting && len(r.queued) < maxQueued {
			r.queued = append(r.queued, tasks...)
			r.mu.Unlock()
			select {
			case r.handed <- struct{}{}:
			default:
			}
			return
		}
		r.mu.Unlock()
	}
	for len(tasks) > 0 {
		n := min(len(tasks), maxSend)
		var a []func(context.Context)
		if after != nil {
			a, after = after[:n], after[n:]
		}
		r.sendRouted(ctx, tasks[:n], a)
		tasks = tasks[n:]
	}
}

// sender enqueues the tasks handed over, all that wait at a time. When the relay stops it takes no
// more and sends those that wait.
func (r *Relay) sender(ctx context.Context) {
	// A batch being sent is finished when Stop comes meanwhile (Stop waits for it).
	sctx := context.WithoutCancel(ctx)
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.accepting = false
			r.mu.Unlock()
			// The last tasks handed over: Stop waits for them, briefly (the relay loop of this
			// process or another sends what is left).
			dctx, cancel := context.WithTimeout(sctx, 2*time.Second)
			for r.sendQueued(dctx) {
			}
			cancel()
			return
		case <-r.handed:
		}
		for r.sendQueued(sctx) {
		}
	}
}

// sendQueued sends up to maxSend of the tasks handed over and reports whether there were any.
func (r *Relay) sendQueued(ctx context.Context) bool {
	r.mu.Lock()
	n := min(len(r.queued), maxSend)
	tasks := slices.Clone(r.queued[:n])
	r.queued = slices.Delete(r.queued, 0, n)
	r.mu.Unlock()
	if n == 0 {
		return false
	}
	r.sendRouted(ctx, tasks, nil) // routed by Dispatch
	return true
}

// route routes tasks in place (RelayConfig.Route) and returns what to run once each is enqueued
// (nil: nothing to run, for each task or for all).
func (r *Relay) route(ctx context.Context, tasks []store.OutboxTask) []func(context.Context) {
	if r.cfg.Route == nil {
		return nil
	}
	after := make([]func(context.Context), len(tasks))
	for i := range tasks {
		tasks[i], after[i] = r.cfg.Route(ctx, tasks[i])
	}
	return after
}

// sendRouted enqueues tasks (routed already: its own slice, which it changes) in one round trip,
// runs after[i] (when after and after[i] are set) once task i is enqueued, rings for those to run
// now and queues their rows for deletion; a task it cannot enqueue is left to the relay loop.
func (r *Relay) sendRouted(ctx context.Context, tasks []store.OutboxTask, after []func(context.Context)) {
	for i := range tasks {
		if t := &tasks[i]; t.ProcessAt == nil && len(t.Carried) > 0 { // only a task to run now carries its job
			t.Payload = task.WithSnap(t.Payload, t.Carried)
		}
	}
	errs := EnqueueAll(ctx, r.rdb, r.q, tasks)
	ids := make([]int64, 0, len(tasks))
	var rings []Ring
	var failed []error
	for i, t := range tasks {
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		if after != nil && after[i] != nil {
			after[i](ctx)
		}
		if r.cfg.Bell != nil && t.ProcessAt == nil {
			rings = append(rings, Ring{Queue: t.Queue, ID: t.TaskID, Type: t.TypeName, Payload: t.Payload, At: r.cfg.Now().UnixMicro()})
		}
		if t.ID != 0 {
			ids = append(ids, t.ID)
		}
	}
	if len(failed) > 0 {
		r.cfg.Logger.Warn("dispatch tasks; the relay will send them", "tasks", len(failed), "err", failed[0])
		r.Notify()
	}
	if len(rings) > 0 {
		r.cfg.Bell.Ring(rings...)
	}
	if len(ids) == 0 {
		return
	}
	r.mu.Lock()
	r.sent = append(r.sent, ids...)
	r.enqueued += int64(len(ids))
	r.mu.Unlock()
	select {
	case r.flush <- struct{}{}:
	default:
	}
}

// deleter deletes the outbox rows of dispatched tasks, gathering ids for DeleteDelay so that many
// share one statement. A row it fails to delete is sent again by the relay loop, harmlessly.
func (r *Relay) deleter(ctx context.Context, sent <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			// Last batch, once the sender sent what was handed over: Stop waits for it, briefly.
			<-sent
			r.deleteSent(ctx, 2*time.Second)
			return
		case <-r.flush:
		}
		t := time.NewTimer(r.cfg.DeleteDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			continue // Stopping: the last batch (above) takes these ids too
		case <-t.C:
		}
		r.deleteSent(ctx, deleteTimeout)
	}
}

// deleteTimeout bounds one batch of deletions.
const deleteTimeout = 10 * time.Second

// deleteSent deletes the rows of the tasks sent so far, within timeout and whether or not ctx ends
// meanwhile (Stop waits for the batch; cut short, it would be dropped). The ids of rows it could
// not delete go back to the next batch (until then, the relay loop may send their tasks again,
// harmlessly).
func (r *Relay) deleteSent(ctx context.Context, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	r.mu.Lock()
	ids := r.sent
	r.sent = nil
	r.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		if err := r.store.DeleteOutbox(ctx, ids[:n]); err != nil {
			r.cfg.Logger.Warn("delete dispatched outbox rows; the relay may send them again", "err", err)
			r.mu.Lock()
			r.sent = slices.Concat(ids, r.sent)
			r.mu.Unlock()
			return
		}
		ids = ids[n:]
	}
}

func (r *Relay) loop(ctx context.Context) {
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	failures := 0
	for {
		n, err := r.RunOnce(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			failures++
			r.cfg.Logger.Warn("outbox relay", "err", err)
		case err == nil:
			failures = 0
		}
		if n == r.cfg.BatchSize && err == nil {
			continue // more waiting
		}
		wait := r.cfg.PollInterval
		if failures > 0 {
			wait = min(time.Duration(failures)*r.cfg.PollInterval, 10*r.cfg.PollInterval)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// RunOnce moves one batch: it claims rows, enqueues them and deletes them in one transaction, so a
// failure leaves them for the next try.
func (r *Relay) RunOnce(ctx context.Context) (int, error) {
	var n int
	err := r.store.Tx(ctx, func(tx store.Tx) error {
		n = 0
		tasks, err := tx.ClaimOutbox(ctx, r.cfg.Now().Add(-r.cfg.MinAge), r.cfg.BatchSize)
		if err != nil || len(tasks) == 0 {
			return err
		}
		ids := make([]int64, 0, len(tasks))
		for i, err := range EnqueueAll(ctx, r.rdb, r.q, tasks) {
			if err != nil {
				return err
			}
			ids = append(ids, tasks[i].ID)
		}
		n = len(ids)
		return tx.DeleteOutbox(ctx, ids)
	})
	if err == nil && n > 0 {
		r.mu.Lock()
		r.enqueued += int64(n)
		r.mu.Unlock()
	}
	return n, err
}

// Enqueue puts one task into Asynq with its deterministic id; an id already present is success.
func Enqueue(ctx context.Context, q Enqueuer, t store.OutboxTask) error {
	opts := []asynq.Option{
		asynq.TaskID(t.TaskID), asynq.Queue(t.Queue), asynq.MaxRetry(TaskMaxRetry),
		// Asynq's own timeout only guards against hung handlers; steps have their own timeouts.
		asynq.Timeout(asynqTaskTimeout),
	}
	if t.ProcessAt != nil {
		// Asynq schedules in whole seconds, rounding down; round up so a delay (a service's
		// Retry-After, say) is never cut short.
		at := *t.ProcessAt
		if frac := at.Sub(at.Truncate(time.Second)); frac > 0 {
			at = at.Add(time.Second - frac)
		}
		opts = append(opts, asynq.ProcessAt(at))
	}
	_, err := q.EnqueueContext(ctx, asynq.NewTask(t.TypeName, t.Payload), opts...)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) && !errors.Is(err, asynq.ErrDuplicateTask) {
		return fmt.Errorf("enqueue %s: %w", t.TaskID, err)
	}
	return nil
}

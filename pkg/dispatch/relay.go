// Package dispatch keeps Redis in agreement with Postgres: the relay moves committed outbox tasks into
// Asynq, and the reconciler re-enqueues waiting steps whose tasks Redis lost (restart without
// persistence, FLUSHALL, archived tasks). Task ids are deterministic, so enqueueing twice is harmless.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"

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

// Relay moves outbox tasks into Asynq. The process that commits a task enqueues it at once
// (Dispatch) and deletes its outbox row soon after, batched with others; the relay loop sends what
// such a process left behind (it crashed, or Redis was unreachable), so every committed task reaches
// the queue. Every process that writes state runs one; concurrent relays skip each other's rows.
type Relay struct {
	store store.Store
	q     Enqueuer
	cfg   RelayConfig
	wake  chan struct{}

	life startstop.Loop

	mu       sync.Mutex
	enqueued int64
	sent     []int64       // ids of dispatched tasks whose rows wait to be deleted
	flush    chan struct{} // wakes the deleter
}

// NewRelay returns a relay; call Start to run it.
func NewRelay(st store.Store, q Enqueuer, cfg RelayConfig) *Relay {
	return &Relay{store: st, q: q, cfg: cfg.withDefaults(), wake: make(chan struct{}, 1), flush: make(chan struct{}, 1)}
}

// Notify wakes the relay after a commit that added outbox rows. It never blocks.
func (r *Relay) Notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Start runs the relay loop and the deleter of dispatched rows until Stop. Safe to call twice.
func (r *Relay) Start(ctx context.Context) error {
	r.life.Start(ctx, func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Go(func() { r.loop(ctx) })
		wg.Go(func() { r.deleter(ctx) })
		wg.Wait()
	})
	return nil
}

// Stop ends the loop after the current batch and deletes the rows dispatched so far. Safe to call
// twice.
func (r *Relay) Stop(ctx context.Context) error {
	_, err := r.life.Stop(ctx)
	return err
}

// Dispatch enqueues the tasks of a change that was just committed, and has their outbox rows
// deleted soon after. A task it cannot enqueue stays in the outbox for the relay loop.
func (r *Relay) Dispatch(ctx context.Context, tasks []store.OutboxTask) {
	ids := make([]int64, 0, len(tasks))
	var rings []Ring
	for _, t := range tasks {
		var enqueued func(context.Context)
		if r.cfg.Route != nil {
			t, enqueued = r.cfg.Route(ctx, t)
		}
		if t.ProcessAt == nil && len(t.Carried) > 0 { // only a task to run now carries its job
			t.Payload = task.WithSnap(t.Payload, t.Carried)
		}
		if err := Enqueue(ctx, r.q, t); err != nil {
			r.cfg.Logger.Warn("dispatch task; the relay will send it", "task_id", t.TaskID, "err", err)
			r.Notify()
			continue
		}
		if enqueued != nil {
			enqueued(ctx)
		}
		if r.cfg.Bell != nil && t.ProcessAt == nil {
			rings = append(rings, Ring{Queue: t.Queue, ID: t.TaskID, Type: t.TypeName, Payload: t.Payload, At: r.cfg.Now().UnixMicro()})
		}
		if t.ID != 0 {
			ids = append(ids, t.ID)
		}
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
func (r *Relay) deleter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			// Last batch: Stop waits for it, briefly.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			r.deleteSent(dctx)
			cancel()
			return
		case <-r.flush:
		}
		t := time.NewTimer(r.cfg.DeleteDelay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		r.deleteSent(ctx)
	}
}

func (r *Relay) deleteSent(ctx context.Context) {
	r.mu.Lock()
	ids := r.sent
	r.sent = nil
	r.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		if err := r.store.DeleteOutbox(ctx, ids[:n]); err != nil {
			if ctx.Err() == nil {
				r.cfg.Logger.Warn("delete dispatched outbox rows; the relay will send them again", "err", err)
			}
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
		for _, t := range tasks {
			if err := Enqueue(ctx, r.q, t); err != nil {
				return err
			}
			ids = append(ids, t.ID)
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
		asynq.Timeout(24 * time.Hour),
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

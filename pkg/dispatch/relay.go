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

	"github.com/cao-run/cao/pkg/store"
)

// TaskMaxRetry is the Asynq retry budget of step tasks. CAO counts attempts in the database; Asynq
// retries only infrastructure failures (database unreachable) and "service busy" requeues, which
// do not consume this budget.
const TaskMaxRetry = 25

// RelayConfig tunes the relay; zero values take the defaults.
type RelayConfig struct {
	PollInterval time.Duration // how often to look for tasks without a wake-up; default 1s
	BatchSize    int           // tasks per transaction; default 100
	Logger       *slog.Logger
}

func (c RelayConfig) withDefaults() RelayConfig {
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 100
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

// Relay moves outbox rows into Asynq. Every process that writes state runs one; concurrent relays
// skip each other's rows.
type Relay struct {
	store store.Store
	q     Enqueuer
	cfg   RelayConfig
	wake  chan struct{}

	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
	enqueud int64
}

// NewRelay returns a relay; call Start to run it.
func NewRelay(st store.Store, q Enqueuer, cfg RelayConfig) *Relay {
	return &Relay{store: st, q: q, cfg: cfg.withDefaults(), wake: make(chan struct{}, 1)}
}

// Notify wakes the relay after a commit that added outbox rows. It never blocks.
func (r *Relay) Notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Start runs the relay loop until Stop. Safe to call twice.
func (r *Relay) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil {
		return nil
	}
	// The loop outlives the start request; Stop ends it.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	r.done = make(chan struct{})
	go r.loop(lctx)
	return nil
}

// Stop ends the loop after the current batch. Safe to call twice.
func (r *Relay) Stop(ctx context.Context) error {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel = nil
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Enqueued returns how many tasks this relay has moved (for metrics and tests).
func (r *Relay) Enqueued() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.enqueud
}

func (r *Relay) loop(ctx context.Context) {
	defer close(r.done)
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
		tasks, err := tx.ClaimOutbox(ctx, r.cfg.BatchSize)
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
		r.enqueud += int64(n)
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

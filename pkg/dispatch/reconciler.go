package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// EpochKey is a Redis key the reconciler keeps; its disappearance means Redis lost its data, which
// triggers an immediate full re-enqueue of waiting steps.
const EpochKey = "cao:epoch"

// asynqQueuesKey is the set in which Asynq lists known queues (asynq/internal/base.AllQueues).
const asynqQueuesKey = "asynq:queues"

// ReconcilerConfig tunes the reconciler; zero values take the defaults.
type ReconcilerConfig struct {
	// Interval between sweeps of waiting steps. Default 10s.
	Interval time.Duration
	// Grace is how long a step must have waited before its task is checked (avoids racing the relay).
	// Default 5s.
	Grace time.Duration
	// BatchSize bounds the steps checked per sweep. Default 500.
	BatchSize int
	Logger    *slog.Logger
}

func (c ReconcilerConfig) withDefaults() ReconcilerConfig {
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 5 * time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Reconciler re-enqueues the tasks of QUEUED and RETRYING steps that Redis does not have.
type Reconciler struct {
	store store.Store
	rdb   redis.UniversalClient
	q     Enqueuer
	insp  *asynq.Inspector
	cfg   ReconcilerConfig
	now   func() time.Time

	mu        sync.Mutex
	fixed     int64
	lastSweep time.Time
}

// NewReconciler returns a reconciler using the process's shared Redis client.
func NewReconciler(st store.Store, rdb redis.UniversalClient, q Enqueuer, cfg ReconcilerConfig) *Reconciler {
	return &Reconciler{
		store: st, rdb: rdb, q: q, insp: asynq.NewInspectorFromRedisClient(rdb), cfg: cfg.withDefaults(), now: time.Now,
	}
}

// Fixed returns how many tasks were re-enqueued so far.
func (r *Reconciler) Fixed() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fixed
}

// Tick checks whether Redis lost its data (the epoch key vanished) and sweeps waiting steps when a
// sweep is due or data was lost. Call it about every second from one process (the maintenance leader).
func (r *Reconciler) Tick(ctx context.Context) error {
	created, err := r.rdb.SetNX(ctx, EpochKey, r.now().UTC().Format(time.RFC3339Nano), 0).Result()
	if err != nil {
		return fmt.Errorf("check epoch key: %w", err)
	}
	r.mu.Lock()
	first := r.lastSweep.IsZero()
	due := r.now().Sub(r.lastSweep) >= r.cfg.Interval
	r.mu.Unlock()
	full := created && !first
	if full {
		r.cfg.Logger.Warn("redis data loss detected; re-enqueueing waiting steps from the database")
	}
	if !full && !due {
		return nil
	}
	// A first sweep after start is a full one: Redis may have been lost while no process ran.
	if _, err := r.Sweep(ctx, full || first); err != nil {
		return err
	}
	r.mu.Lock()
	r.lastSweep = r.now()
	r.mu.Unlock()
	return nil
}

// Sweep checks waiting steps and re-enqueues the tasks Redis lacks. With all, it checks every waiting
// step regardless of age. It returns how many tasks it enqueued.
func (r *Reconciler) Sweep(ctx context.Context, all bool) (int, error) {
	before := r.now().Add(-r.cfg.Grace)
	if all {
		before = r.now().Add(time.Hour)
	}
	steps, err := r.store.ListWaitingSteps(ctx, before, r.cfg.BatchSize)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range steps {
		p := task.StepPayload{JobID: s.JobID, Step: s.Name, Run: s.Run, Attempt: s.Attempts + 1}
		id := p.TaskID()
		info, err := r.insp.GetTaskInfo(s.Queue, id)
		switch {
		case err == nil && info.State != asynq.TaskStateArchived && info.State != asynq.TaskStateCompleted:
			continue // Redis has it
		case err == nil:
			// Archived (retries exhausted by infrastructure failures) or completed without effect:
			// delete it so the id can be enqueued again.
			if derr := r.insp.DeleteTask(s.Queue, id); derr != nil && !errors.Is(derr, asynq.ErrTaskNotFound) {
				return n, fmt.Errorf("delete archived task %s: %w", id, derr)
			}
		case errors.Is(err, asynq.ErrQueueNotFound):
			// Redis lost its data: Asynq clients remember which queues they registered and do not
			// register them again, so inspection (health, asynqmon) would miss the queue.
			if err := r.rdb.SAdd(ctx, asynqQueuesKey, s.Queue).Err(); err != nil {
				return n, fmt.Errorf("register queue %s: %w", s.Queue, err)
			}
		case errors.Is(err, asynq.ErrTaskNotFound):
		default:
			return n, fmt.Errorf("inspect task %s: %w", id, err)
		}
		ot := store.OutboxTask{TaskID: id, Queue: s.Queue, TypeName: task.TypeStep, Payload: p.Marshal()}
		if s.Status == store.StepRetrying && s.NextAttemptAt != nil && s.NextAttemptAt.After(r.now()) {
			at := *s.NextAttemptAt
			ot.ProcessAt = &at
		}
		if err := Enqueue(ctx, r.q, ot); err != nil {
			return n, err
		}
		n++
	}
	if n > 0 {
		r.mu.Lock()
		r.fixed += int64(n)
		r.mu.Unlock()
		r.cfg.Logger.Info("re-enqueued lost tasks", "count", n)
	}
	return n, nil
}

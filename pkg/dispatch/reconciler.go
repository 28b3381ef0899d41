package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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

// OrphanSuffix ends the id of the copy of a task whose worker died before claiming its step.
const OrphanSuffix = ":orphan"

// WaitSuffixes end the ids of the scheduled copies of a step task whose service was full: a worker
// that cannot start the step schedules a copy under the other suffix and acknowledges the task it
// holds (two, since the copy cannot take the id of the task being processed).
var WaitSuffixes = [2]string{":wait-a", ":wait-b"}

// WaitCopyID returns the id of the scheduled copy of the task with id: the other wait suffix.
func WaitCopyID(id string) string {
	if base, ok := strings.CutSuffix(id, WaitSuffixes[0]); ok {
		return base + WaitSuffixes[1]
	}
	return strings.TrimSuffix(id, WaitSuffixes[1]) + WaitSuffixes[0]
}

// orphanAfter is how long a task's Asynq lease may go unrenewed before the task counts as orphaned.
const orphanAfter = 12 * time.Second

type taskState int

const (
	taskMissing  taskState = iota // not in Redis, or archived/completed (deleted so the id can be reused)
	taskPresent                   // waiting to be processed, or processed by a live worker
	taskOrphaned                  // active on a worker that stopped renewing its lease
)

// taskState reports what Redis holds for the task id.
func (r *Reconciler) taskState(ctx context.Context, queue, id string) (taskState, error) {
	info, err := r.insp.GetTaskInfo(queue, id)
	switch {
	case errors.Is(err, asynq.ErrQueueNotFound):
		// Redis lost its data: Asynq clients remember which queues they registered and do not
		// register them again, so inspection (health, asynqmon) would miss the queue.
		if err := RegisterQueue(ctx, r.rdb, queue); err != nil {
			return 0, err
		}
		return taskMissing, nil
	case errors.Is(err, asynq.ErrTaskNotFound):
		// A worker may have taken it out of its queue for the bell (Steal) and be about to claim it.
		n, err := r.rdb.Exists(ctx, stolenKey(queue, id)).Result()
		if err != nil {
			return 0, fmt.Errorf("stolen task %s: %w", id, err)
		}
		if n > 0 {
			return taskPresent, nil
		}
		return taskMissing, nil
	case err != nil:
		return 0, fmt.Errorf("inspect task %s: %w", id, err)
	case info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted:
		// Archived (retries exhausted by infrastructure failures) or completed without effect:
		// delete it so the id can be enqueued again.
		if derr := r.insp.DeleteTask(queue, id); derr != nil && !errors.Is(derr, asynq.ErrTaskNotFound) {
			return 0, fmt.Errorf("delete archived task %s: %w", id, derr)
		}
		return taskMissing, nil
	case info.State == asynq.TaskStateActive:
		score, err := r.rdb.ZScore(ctx, asynqLeaseKey(queue), id).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return taskPresent, nil
		case err != nil:
			return 0, fmt.Errorf("task lease %s: %w", id, err)
		case time.Unix(int64(score), 0).Before(r.now().Add(asynqLease - orphanAfter)):
			return taskOrphaned, nil
		}
	}
	return taskPresent, nil
}

// lostTask returns the id under which to enqueue the task of a waiting step whose task id is base
// when Redis has no live task for it, or "" when it has one. A task stands for the step under its
// own id, as the copy the reconciler made of an orphaned one (OrphanSuffix), or as the scheduled copy
// of a step that waited for its service (WaitSuffixes; once handed out, it runs under that id). One
// active on a worker that died before claiming the step (orphaned) stands for nothing: Asynq hands
// it out again only a minute or more later. The step is then enqueued under base, or under the
// orphan id when base is taken; claiming a step is a compare-and-set, so whichever copy runs second
// is acknowledged as stale.
func (r *Reconciler) lostTask(ctx context.Context, queue, base string) (string, error) {
	ids := [...]string{base, base + OrphanSuffix, base + WaitSuffixes[0], base + WaitSuffixes[1]}
	const copies = 2 // ids[:copies] may be enqueued; the wait copies' ids are the runner's
	free := ""
	for i, id := range ids {
		st, err := r.taskState(ctx, queue, id)
		if err != nil {
			return "", err
		}
		switch {
		case st == taskPresent:
			return "", nil
		case st == taskMissing && free == "" && i < copies:
			free = id
		}
	}
	return free, nil
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
		ot := task.ForStep(&s, "", "", r.now())
		id, err := r.lostTask(ctx, s.Queue, ot.TaskID)
		if err != nil {
			return n, err
		}
		if id == "" {
			continue // Redis has it, or holds every id a copy could take (left to Asynq's recovery)
		}
		ot.TaskID = id
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

package runner

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// The bell (dispatch.Bell) rings for every step task dispatched to run now. An idle Asynq server
// finds such a task only at its next look at its queues (Config.IdlePoll, jittered ±50%), so a
// worker with a free handler answers the ring: it takes the task out of its queue if it is still
// pending (dispatch.Steal, atomic: Asynq can no longer hand it out, and of several workers only one
// takes it) and runs it as Asynq would have. Asynq and the bell share the worker's handlers
// (slots), so the worker never runs more than Config.Concurrency steps.

// How a handler got its task (Hooks.OnTask): the bell, or Asynq's poll of its queues.
const (
	ViaBell = "bell"
	ViaPoll = "poll"
)

// ringMaxAge is the age past which a ring is not answered: its task has been handed out by a poll.
const ringMaxAge = time.Second

// maxMissed is how many rings in a row whose tasks were gone make a handler forget the deferred rings.
const maxMissed = 3

// maxDeferred bounds the rings that wait for a free handler; past it the oldest are dropped (their
// tasks wait for a poll).
const maxDeferred = 256

// stolenTimeout bounds a stolen task's handler as Asynq's timeout bounds the others (dispatch.Enqueue).
const stolenTimeout = 24 * time.Hour

// slots are the worker's handlers: one per step it runs, whether Asynq or the bell handed it out.
type slots chan struct{}

func (s slots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (s slots) tryAcquire() bool {
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s slots) release() { <-s }

// answerBell answers rings until the listener is closed.
func (r *Runner) answerBell(l *dispatch.BellListener) {
	for rings := range l.C() {
		for _, g := range rings {
			r.answer(g)
		}
	}
}

// answer takes and runs the task of ring g when this worker serves its queue, owns the ring (or its
// owner passed it on) and is not stopping. Without a free handler the ring waits for the next handler
// to free (deferred): the task may still be pending then, since an Asynq server that found its queues
// empty sleeps until its next poll. An owner without a free handler also passes the ring on to the
// other workers, one of which may have a free handler now.
func (r *Runner) answer(g dispatch.Ring) {
	if (g.Type != "" && g.Type != task.TypeStep) || r.admitCtx.Err() != nil {
		return
	}
	if _, ok := r.cfg.Queues[g.Queue]; !ok {
		return
	}
	// A passed-on ring that this worker owns is one it passed on itself, and deferred already.
	if owns := r.owners.Owns(g); owns == g.Open {
		return
	}
	now := r.cfg.Now()
	if now.Sub(time.UnixMicro(g.At)) > ringMaxAge {
		return
	}
	if !r.slots.tryAcquire() {
		if !g.Open && r.owners.Shared(g.Queue) {
			r.ringer.PassOn(g)
		}
		r.deferred.push(g, maxDeferred)
		if !r.slots.tryAcquire() {
			return // the next handler to free takes it (freeSlot)
		}
		// A handler freed in between, maybe before the ring was deferred.
		var ok bool
		if g, ok = r.deferred.pop(now); !ok {
			r.slots.release()
			return
		}
	}
	// Added before Stop can wait for the handlers: Stop closes the listener, and waits for this
	// loop to end, before it waits for them.
	r.wg.Add(1)
	go r.serveRings(g)
}

// serveRings runs, on a handler it holds, the task of ring g and then those of the deferred rings,
// oldest first, while their tasks are pending; then it frees the handler. After maxMissed rings in a
// row whose tasks were gone (an Asynq server or another worker took them: the queue is being served),
// it forgets the deferred rings instead of trying each one.
func (r *Runner) serveRings(g dispatch.Ring) {
	defer r.wg.Done()
	missed := 0
	for {
		if r.takeAndRun(g) {
			missed = 0
		} else if missed++; missed == maxMissed {
			r.deferred.clear()
			break
		}
		next, ok := r.deferred.pop(r.cfg.Now())
		if !ok || r.admitCtx.Err() != nil {
			break
		}
		g = next
	}
	r.slots.release()
}

// freeSlot frees a handler Asynq's task held: to the oldest deferred ring, or back.
func (r *Runner) freeSlot() {
	if r.admitCtx.Err() == nil {
		if g, ok := r.deferred.pop(r.cfg.Now()); ok {
			r.wg.Add(1) // the caller (handle) holds one: Stop cannot be waiting at zero
			go r.serveRings(g)
			return
		}
	}
	r.slots.release()
}

// takeAndRun takes the task of ring g out of its queue if it is still pending, and runs it. It
// reports whether it took the task.
func (r *Runner) takeAndRun(g dispatch.Ring) bool {
	ctx, cancel := context.WithTimeout(r.runCtx, stolenTimeout)
	defer cancel()
	if len(g.Payload) == 0 {
		// Only its id: read the task while it waits in its queue.
		info, err := r.insp.GetTaskInfo(g.Queue, g.ID)
		if err != nil || info.State != asynq.TaskStatePending || info.Type != task.TypeStep {
			return false
		}
		g.Type, g.Payload = info.Type, info.Payload
	}
	taken, err := dispatch.Steal(ctx, r.rdb, g.Queue, g.ID)
	if err != nil || !taken {
		return false // handed out already (or Redis failed: the poll finds it)
	}
	if r.cfg.Hooks.OnTask != nil {
		r.cfg.Hooks.OnTask(ViaBell)
	}
	t := asynq.NewTask(g.Type, g.Payload)
	if err := r.run(ctx, source{id: g.ID, queue: g.Queue}, t); err != nil {
		r.settleStolen(ctx, g, t, err)
	}
	return true
}

// deferredRings are the rings a worker could not answer for want of a free handler, oldest first.
type deferredRings struct {
	mu    sync.Mutex
	rings []dispatch.Ring
}

// push adds g, dropping the oldest ring beyond limit.
func (d *deferredRings) push(g dispatch.Ring, limit int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rings = append(d.rings, g)
	if n := len(d.rings); n > limit {
		d.rings = slices.Delete(d.rings, 0, n-limit)
	}
}

// clear forgets every ring.
func (d *deferredRings) clear() {
	d.mu.Lock()
	d.rings = nil
	d.mu.Unlock()
}

// pop removes and returns the oldest ring younger than ringMaxAge at now, dropping older ones.
func (d *deferredRings) pop(now time.Time) (dispatch.Ring, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.rings) > 0 {
		g := d.rings[0]
		d.rings = d.rings[1:]
		if len(d.rings) == 0 {
			d.rings = nil
		}
		if now.Sub(time.UnixMicro(g.At)) <= ringMaxAge {
			return g, true
		}
	}
	return dispatch.Ring{}, false
}

// settleStolen does for a stolen task whose handler returned err what Asynq does for the tasks it
// hands out. A step that failed for good: its task goes back to its queue marked failed
// (StepPayload.Failed), and the worker that gets it fails it at once, so Asynq archives it with the
// error and counts it failed. Any other error: the task goes back to its queue after retryDelay.
// When that fails the step, still QUEUED in the database, is enqueued again by the reconciler.
func (r *Runner) settleStolen(ctx context.Context, g dispatch.Ring, t *asynq.Task, err error) {
	ctx = context.WithoutCancel(ctx)
	back := store.OutboxTask{TaskID: g.ID, Queue: g.Queue, TypeName: g.Type, Payload: g.Payload}
	if errors.Is(err, asynq.SkipRetry) {
		p, perr := task.ParseStepPayload(g.Payload)
		if perr != nil || p.Failed != "" {
			return // malformed (logged by run), or marked already
		}
		p.Failed = strings.TrimPrefix(err.Error(), asynq.SkipRetry.Error()+": ")
		p.Snap = nil // Asynq archives the task: it keeps no copy of the job
		back.Payload = p.Marshal()
	} else {
		at := r.cfg.Now().Add(retryDelay(0, err, t))
		back.ProcessAt = &at
	}
	if qerr := dispatch.Enqueue(ctx, r.queue, back); qerr != nil {
		r.cfg.Logger.Warn("put back the task of a step the bell ran", "task_id", g.ID, "err", qerr)
	}
}

package runner

// This file is the worker's side of sharing a saturated service between tenants (package fairness):
// a step that finds its service saturated, beyond the few its worker keeps in the wait room, is
// parked; a worker that gives a slot back hands out the next parked step.

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/waits"
)

// parkSweepEvery is how often a worker checks for hand-outs that were lost (a worker died between
// taking a step out of the fair queue and moving its task) and for services with free slots that
// keep steps parked (a step parked just after the last slot was given back).
const parkSweepEvery = time.Second

// errPark ends a step's wait for its service: it must wait parked in the fair queue (the wait room is
// full, or other steps are parked already and this one came later).
var errPark = errors.New("service saturated: wait in the fair queue")

// enterRoom is the wait room's Enter check for step p: a step that has not waited before does not
// go ahead of the steps parked already; it parks behind them (fairness is decided by the queue). A
// step that waits in the room gets a note saying why (and *noted is set), and entered is called.
func (r *Runner) enterRoom(svc *registry.Service, p task.StepPayload, noted *bool, entered func(context.Context)) func(context.Context) error {
	return func(ctx context.Context) error {
		if p.Since == 0 {
			n, err := r.parker.Any(ctx, svc)
			if err != nil {
				return err
			}
			if n {
				return errPark
			}
			p.Since = r.cfg.Now().UnixMicro()
		}
		r.parker.Note(ctx, svc, p, waits.Slot, time.Time{}, "")
		*noted = true
		if entered != nil {
			entered(ctx)
		}
		return nil
	}
}

// park acknowledges task t of step p, whose service svc is saturated, once the step is parked (see
// package fairness). When the step cannot be parked, the task is retried by Asynq instead (not a
// failure).
func (r *Runner) park(ctx context.Context, src source, t *asynq.Task, p task.StepPayload, svc *registry.Service, b *busyError) error {
	id, queue := src.id, src.queue
	if id == "" || queue == "" {
		return b
	}
	ctx = context.WithoutCancel(ctx)
	if err := r.parker.Park(ctx, svc, queue, id, t.Type(), p); err != nil {
		r.cfg.Logger.Warn("could not park a waiting step; Asynq retries it", "task_id", id, "err", err)
		return b
	}
	// The slots may all have been given back between the step's try and its parking, with nobody
	// left to hand it out: hand out what the free slots allow.
	r.unparkFree(ctx, svc)
	return nil
}

// unparkFree hands out as many parked steps of svc as it has free slots, when it has any.
func (r *Runner) unparkFree(ctx context.Context, svc *registry.Service) {
	parked, err := r.parker.Any(ctx, svc)
	if err != nil || !parked {
		return
	}
	used, err := r.sem.InUse(ctx, svc.Name)
	if err != nil {
		return
	}
	limit := svc.MaxConcurrency
	if aimd := aimdOf(svc); aimd != nil {
		if st, err := r.adapt.State(ctx, svc.Name, aimd); err == nil {
			limit = st.Limit
		}
	}
	if free := limit - used - r.room.Waiting(svc.Name); free > 0 {
		r.parker.Unpark(ctx, svc, free)
	}
}

// sweepParked hands out, for every service with a max_concurrency and every parkSweepEvery until ctx
// ends, the steps whose hand-out is overdue and as many parked steps as the service has free slots.
func (r *Runner) sweepParked(ctx context.Context) {
	t := time.NewTicker(parkSweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, svc := range r.cfg.Services {
			if svc.MaxConcurrency > 0 {
				sctx, cancel := context.WithTimeout(ctx, parkSweepEvery)
				r.parker.Overdue(sctx, svc)
				r.unparkFree(sctx, svc)
				cancel()
			}
		}
	}
}

// Package fairness shares a saturated service between tenants. A step that cannot start because
// its service is saturated waits "parked": a scheduled copy of its task stands in for it in Asynq
// (the fallback, due after Config.Fallback), and an entry in the service's limiter.FairQueue
// (Redis) records its place. Whenever a worker gives a slot of the service back, it hands out the
// next parked step, round-robin by tenant (CAO_TENANT_WEIGHTS) and first come first served within a
// tenant, by moving that step's task to its queue at once (asynq RunTask).
//
// Steps are parked by the worker that finds the service saturated (Park) and, once some are parked,
// already when they are dispatched (Route), so one tenant's backlog of thousands of steps never
// stands in the task queue in front of another tenant's step: it waits in the fair queue instead.
//
// Crash safety is the task's: an entry lost with Redis goes with its task, and the reconciler
// enqueues the step again from Postgres (it is QUEUED there all along); an entry whose task ran
// already (its fallback came first) is skipped when its turn comes.
package fairness

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/waits"
)

// DefaultFallback is Config.Fallback's default.
const DefaultFallback = time.Minute

// Config holds a Parker's settings; zero values take the defaults.
type Config struct {
	// Weights are the tenants' shares of a saturated service (CAO_TENANT_WEIGHTS); a tenant not
	// listed weighs 1.
	Weights map[string]int
	// Fallback is when a parked step's task runs by itself if its turn has not come by then (its
	// entry was lost). Default 1m.
	Fallback time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives warnings. Default slog.Default().
	Logger *slog.Logger
	// Notes, when set, get a note for every parked step saying why it waits (for the job object).
	Notes *waits.Book
	// Bell, when set, rings for every step handed out, so that an idle worker starts it at once
	// instead of at its next poll. Optional.
	Bell *dispatch.Bell
}

// Parker parks steps of saturated services and hands them out fairly.
type Parker struct {
	fair *limiter.FairQueue
	rdb  redis.UniversalClient // Asynq's Redis, to list a queue Asynq forgot (RegisterQueue)
	insp *asynq.Inspector
	q    dispatch.Enqueuer
	reg  *registry.Registry
	cfg  Config
}

// New returns a Parker keeping its queues with fair, enqueueing with q and handing out through
// Asynq on rdb. reg resolves a dispatched task's service for Route; it may be nil when Route is not
// used.
func New(fair *limiter.FairQueue, q dispatch.Enqueuer, rdb redis.UniversalClient, reg *registry.Registry, cfg Config) *Parker {
	if cfg.Fallback <= 0 {
		cfg.Fallback = DefaultFallback
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Parker{fair: fair, q: q, rdb: rdb, insp: asynq.NewInspectorFromRedisClient(rdb), reg: reg, cfg: cfg}
}

// Tenant is the tenant a task's step belongs to.
func Tenant(p task.StepPayload) string {
	if p.Tenant == "" {
		return store.DefaultTenant
	}
	return p.Tenant
}

// weight is tenant's share of a saturated service relative to other tenants.
func (k *Parker) weight(tenant string) int {
	if w, ok := k.cfg.Weights[tenant]; ok {
		return w
	}
	return 1
}

// Any reports whether svc has parked steps.
func (k *Parker) Any(ctx context.Context, svc *registry.Service) (bool, error) {
	return k.fair.Any(ctx, svc.Name)
}

// Park parks step p of svc, whose task (id, in queue, of type typeName) is being processed: it
// schedules a copy of the task (under the other wait id) as the fallback and records the step's
// place. It returns an error when the copy could not be scheduled (the caller keeps the task then);
// a place that could not be recorded only means the step runs at its fallback.
func (k *Parker) Park(ctx context.Context, svc *registry.Service, queue, id, typeName string, p task.StepPayload) error {
	if p.Since == 0 {
		p.Since = k.cfg.Now().UnixMicro()
	}
	copyID := dispatch.WaitCopyID(id)
	at := k.cfg.Now().Add(k.cfg.Fallback)
	if err := dispatch.Enqueue(ctx, k.q, store.OutboxTask{
		TaskID: copyID, Queue: queue, TypeName: typeName, Payload: p.Marshal(), ProcessAt: &at,
	}); err != nil {
		return err
	}
	k.place(ctx, svc, queue, copyID, p)
	return nil
}

// place records parked step p's place in svc's fair queue; its task is id in queue.
func (k *Parker) place(ctx context.Context, svc *registry.Service, queue, id string, p task.StepPayload) {
	tenant := Tenant(p)
	_, err := k.fair.Park(ctx, svc.Name, limiter.Parked{
		ID: p.TaskID(), Tenant: tenant, Since: time.UnixMicro(p.Since), Value: queue + "\n" + id,
	}, k.weight(tenant))
	if err != nil {
		k.cfg.Logger.Warn("could not queue a waiting step fairly; it runs when its fallback is due", "task_id", id, "err", err)
	}
	k.Note(ctx, svc, p, waits.Slot, time.Time{}, "")
}

// Route is a dispatch.Route: a step task dispatched while its service has parked steps is parked
// too, behind them in the fair order (its task is scheduled at the fallback, and its place is
// recorded once it is enqueued). Other tasks are enqueued as they are.
func (k *Parker) Route(ctx context.Context, t store.OutboxTask) (store.OutboxTask, func(context.Context)) {
	if t.TypeName != task.TypeStep || t.ProcessAt != nil {
		return t, nil
	}
	p, err := task.ParseStepPayload(t.Payload)
	if err != nil || p.Feature == "" {
		return t, nil
	}
	svc := k.service(p)
	if svc == nil || svc.MaxConcurrency <= 0 {
		return t, nil
	}
	if parked, err := k.fair.Any(ctx, svc.Name); err != nil || !parked {
		return t, nil
	}
	p.Since = k.cfg.Now().UnixMicro()
	at := k.cfg.Now().Add(k.cfg.Fallback)
	t.Payload, t.ProcessAt = p.Marshal(), &at
	return t, func(ctx context.Context) { k.place(ctx, svc, t.Queue, t.TaskID, p) }
}

func (k *Parker) service(p task.StepPayload) *registry.Service {
	f, ok := k.reg.Feature(p.Feature)
	if !ok {
		return nil
	}
	st, ok := f.Step(p.Step)
	if !ok {
		return nil
	}
	svc, _ := k.reg.Service(st.Service)
	return svc
}

// Unpark hands out up to n parked steps of svc: their tasks go to their queues at once. A step whose
// task is gone (it ran already) does not count; others are tried in its place, a few rounds at most.
func (k *Parker) Unpark(ctx context.Context, svc *registry.Service, n int) {
	for tries := 0; n > 0 && tries < 3; tries++ {
		hs, err := k.fair.Unpark(ctx, svc.Name, n, svc.MaxConcurrencyPerTenant)
		if err != nil {
			k.cfg.Logger.Warn("hand out parked steps", "service", svc.Name, "err", err)
			return
		}
		if len(hs) == 0 {
			return
		}
		n -= k.handOut(ctx, svc, hs)
	}
}

// Overdue hands out again the steps of svc handed out long ago that neither got in nor wait again
// (the process that handed them out may have died before their task was moved).
func (k *Parker) Overdue(ctx context.Context, svc *registry.Service) {
	hs, err := k.fair.Overdue(ctx, svc.Name, 100)
	if err != nil {
		k.cfg.Logger.Warn("hand out overdue steps", "service", svc.Name, "err", err)
		return
	}
	k.handOut(ctx, svc, hs)
}

// handOut moves the tasks of the steps handed out to their queues and returns how many it moved. A
// step whose task cannot be moved (it ran, or runs, already) is forgotten.
func (k *Parker) handOut(ctx context.Context, svc *registry.Service, hs []limiter.Handout) int {
	moved := 0
	for _, h := range hs {
		queue, id, ok := strings.Cut(h.Value, "\n")
		if ok {
			err := k.insp.RunTask(queue, id)
			if errors.Is(err, asynq.ErrQueueNotFound) && k.rdb != nil {
				// Redis lost its data since this process's client first enqueued into the queue:
				// Asynq lists it no more, though the task is there.
				if err = dispatch.RegisterQueue(ctx, k.rdb, queue); err == nil {
					err = k.insp.RunTask(queue, id)
				}
			}
			if err == nil {
				moved++
				if k.cfg.Bell != nil {
					// Without the task: the worker that answers reads it from the queue.
					k.cfg.Bell.Ring(dispatch.Ring{Queue: queue, ID: id, At: k.cfg.Now().UnixMicro()})
				}
				continue
			}
			k.cfg.Logger.Debug("parked step's task not handed out", "task_id", id, "err", err)
		}
		if err := k.fair.Forget(ctx, svc.Name, h.ID); err != nil {
			k.cfg.Logger.Debug("forget a parked step", "task_id", h.ID, "err", err)
		}
	}
	return moved
}

// Note records, when Config.Notes is set, why step p (which first waited at p.Since) waits for svc:
// reason (package waits), and until when and for which budget when known.
func (k *Parker) Note(ctx context.Context, svc *registry.Service, p task.StepPayload, reason string, until time.Time, budget string) {
	if k.cfg.Notes == nil {
		return
	}
	n := waits.Note{Reason: reason, Service: svc.Name, Tenant: Tenant(p), Since: time.UnixMicro(p.Since).UTC(), Budget: budget}
	if !until.IsZero() {
		n.Until = until.UTC()
	}
	if err := k.cfg.Notes.Record(ctx, p.JobID, p.Step, n); err != nil {
		k.cfg.Logger.Debug("note why a step waits", "job_id", p.JobID, "step", p.Step, "err", err)
	}
}

// Admitted forgets that step p of svc, which had waited, waits: its note, and its place in the fair
// queue (its fallback may have overtaken its turn).
func (k *Parker) Admitted(ctx context.Context, svc *registry.Service, p task.StepPayload) {
	if k.cfg.Notes != nil {
		if err := k.cfg.Notes.Clear(ctx, p.JobID, p.Step); err != nil {
			k.cfg.Logger.Debug("clear a step's wait note", "job_id", p.JobID, "step", p.Step, "err", err)
		}
	}
	if svc.MaxConcurrency <= 0 {
		return
	}
	if _, err := k.fair.Remove(ctx, svc.Name, Tenant(p), p.TaskID()); err != nil {
		k.cfg.Logger.Debug("forget a parked step", "job_id", p.JobID, "step", p.Step, "err", err)
	}
}

package runner

// This file is the worker's side of concurrency_key with max_concurrency_per_key: at most N calls
// in flight per (service, key value), fleet-wide, through a semaphore of its own per key value.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/waits"
)

// WaitKey is the reason of Hooks.OnWait for the time a step waited in its worker for a slot of its
// key value (services or steps with concurrency_key).
const WaitKey = "key"

// keySemaphore names the semaphore of a key value of a service. The value comes from job input: it
// is hashed, so that no brace (which would break the keys' hash tag), no length and no content of
// it reaches Redis.
func keySemaphore(service, value string) string {
	sum := sha256.Sum256([]byte(value))
	return service + "#key-" + hex.EncodeToString(sum[:12])
}

// acquireKey takes a slot of the step's key value, waiting in the wait room as a step waits for its
// service's slot (FIFO across the fleet, woken when a slot frees); a full room returns a busyError,
// so the step goes back to its queue without using an attempt, with a note saying why. A step
// without a key gets the zero lease.
func (r *Runner) acquireKey(ctx context.Context, svc *registry.Service, p *plan) (limiter.Lease, error) {
	if p.key == "" {
		return limiter.Lease{}, nil
	}
	roomSize := max(1, min(p.keyMax, r.cfg.Concurrency/2))
	lease, err := r.room.Acquire(ctx, p.key, p.keyMax, svc.LeaseTTL, roomSize)
	switch {
	case errors.Is(err, limiter.ErrFull):
		return limiter.Lease{}, r.waitBusy(svc.Name, waits.KeySlot, "is at max_concurrency_per_key for this key", 0)
	case err != nil && ctx.Err() != nil:
		return limiter.Lease{}, r.waitBusy(svc.Name, waits.KeySlot, "was still at max_concurrency_per_key for this key when the wait ended", 0)
	}
	return lease, err
}

// freshen renews the leases within the service that an admission took before a wait (its key's,
// its tenant's share) once they are a third of their TTL old, so that each counts from now: every
// lease of the step must last the call (the lease clock counts from the oldest). ErrLeaseLost
// means a wait outlasted one of them.
func (r *Runner) freshen(ctx context.Context, svc *registry.Service, a *admission) error {
	for i, l := range a.extra {
		if l.Token == 0 || r.cfg.Now().Sub(l.RequestedAt) < svc.LeaseTTL/3 {
			continue
		}
		at := r.cfg.Now()
		nl, err := r.sem.Renew(ctx, l, svc.LeaseTTL)
		if err != nil {
			return err
		}
		nl.RequestedAt = at // held until at least at + TTL, as a lease just granted
		a.extra[i] = nl
	}
	return nil
}

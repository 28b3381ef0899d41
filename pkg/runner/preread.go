package runner

import (
	"context"
	"time"

	"github.com/cao-run/cao/pkg/orchestrator"
)

// preread is a read of a step's job started when the step begins to wait in its service's wait
// room: the read overlaps the wait, and the claim that follows the slot's grant is one statement
// instead of a read and a statement, so the slot another step just gave back is busy again sooner.
type preread struct {
	done chan struct{}
	snap *orchestrator.Snapshot
}

// prereadTimeout bounds a read that outlives the wait it overlapped.
const prereadTimeout = 5 * time.Second

// start begins the read of t's job, once.
func (p *preread) start(ctx context.Context, r *Runner, t *orchestrator.Target) {
	if p == nil || p.done != nil {
		return
	}
	p.done = make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(p.done)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), prereadTimeout)
		defer cancel()
		if s, err := r.orch.Read(rctx, t); err == nil {
			p.snap = s
		}
	}()
}

// take waits for the read when one was started and returns its snapshot; nil when none was started,
// it failed or ctx ended first (the claim then reads the job itself).
func (p *preread) take(ctx context.Context) *orchestrator.Snapshot {
	if p == nil || p.done == nil {
		return nil
	}
	select {
	case <-p.done:
		return p.snap
	case <-ctx.Done():
		return nil
	}
}

package runner

import (
	"context"
	"errors"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/store"
)

// cancelledMatch is in every payload that cancels a job (its job message's status): a worker
// decodes only those of the fleet's event payloads.
var cancelledMatch = []byte(`"` + string(store.JobCancelled) + `"`)

// errJobCancelled is the cancellation cause of calls whose job was cancelled.
var errJobCancelled = errors.New("job cancelled")

type running struct {
	cancel context.CancelCauseFunc
}

// watchCancels cancels running calls of jobs that get cancelled, wherever the cancel was requested.
func (r *Runner) watchCancels(sub *events.Subscription) {
	defer close(r.subDone)
	for {
		for m := range sub.C {
			if m.Type == store.EventJob && m.Status == string(store.JobCancelled) {
				r.cancelJob(m.JobID)
			}
		}
		// Closed: either Stop, or the subscriber overflowed (heartbeats still fence); resubscribe.
		if !sub.Overflowed() {
			return
		}
		r.mu.Lock()
		if r.srv == nil {
			r.mu.Unlock()
			return
		}
		sub = r.hub.SubscribeAll(4096, cancelledMatch)
		r.cancelSub = sub
		r.mu.Unlock()
	}
}

func (r *Runner) cancelJob(jobID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for run := range r.inflight[jobID] {
		run.cancel(errJobCancelled)
	}
}

func (r *Runner) track(jobID string, run *running) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.inflight[jobID]
	if m == nil {
		m = map[*running]struct{}{}
		r.inflight[jobID] = m
	}
	m[run] = struct{}{}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(m, run)
		if len(m) == 0 {
			delete(r.inflight, jobID)
		}
	}
}

package runner

import (
	"context"
	"errors"
)

// errJobCancelled is the cancellation cause of calls whose job was cancelled.
var errJobCancelled = errors.New("job cancelled")

type running struct {
	cancel context.CancelCauseFunc
}

// cancelJob cancels this worker's running calls of a job that was cancelled, wherever the cancel was
// requested (events.ListenCancels calls it).
func (r *Runner) cancelJob(jobID string) {
	r.inflightMu.Lock()
	defer r.inflightMu.Unlock()
	for run := range r.inflight[jobID] {
		run.cancel(errJobCancelled)
	}
}

func (r *Runner) track(jobID string, run *running) func() {
	r.inflightMu.Lock()
	defer r.inflightMu.Unlock()
	m := r.inflight[jobID]
	if m == nil {
		m = map[*running]struct{}{}
		r.inflight[jobID] = m
	}
	m[run] = struct{}{}
	return func() {
		r.inflightMu.Lock()
		defer r.inflightMu.Unlock()
		delete(m, run)
		if len(m) == 0 {
			delete(r.inflight, jobID)
		}
	}
}

package orchestrator

import (
	"context"
	"log/slog"

	"github.com/cao-run/cao/pkg/store"
)

// Hooks observe committed changes (metrics, tests). Every hook is optional and runs in the process
// that committed the change, after the commit, so it sees each change exactly once: never for a
// change computed from a state that moved on (a lost compare-and-set), never again in the processes
// that receive the change's events.
type Hooks struct {
	// OnJobFinished is called once per job ending: when a committed change made the job COMPLETED,
	// FAILED or CANCELLED, with the job as that change left it (FinishedAt set). A job resumed and
	// ended again is reported again.
	OnJobFinished func(job store.Job)
}

// observe reports a committed change: one log line per event, then the hooks.
func (o *Orchestrator) observe(ctx context.Context, u *unit) {
	for i := range u.events {
		o.logEvent(ctx, u, &u.events[i])
	}
	if u.ended && u.job.Status.Terminal() && o.cfg.Hooks.OnJobFinished != nil {
		o.cfg.Hooks.OnJobFinished(*u.job)
	}
}

// logEvent writes the lifecycle line of one committed event. Every line carries job_id, tenant,
// feature and seq (the event's number in the job's event log, as GET /jobs/{id}/events shows it); step
// lines also step, service, run and attempt.
//
// Levels: INFO for what a job and its steps did — job created, started, resumed, finished; step
// started, succeeded, retrying (with error class, HTTP status and the retry delay), failed, requeued
// after an interrupted or lost attempt. DEBUG for the bookkeeping those imply — a step queued because
// its needs succeeded, made pending again by a resume, skipped after another step failed or cancelled
// with its job — which the job's own lines already explain. WARN only for a job found stuck (no
// progress for CAO_STUCK_JOB_AFTER), which needs an operator's eye; no normal event is WARN or ERROR.
func (o *Orchestrator) logEvent(ctx context.Context, u *unit, ev *store.Event) {
	level, msg := eventLine(u, ev)
	log := o.cfg.Logger
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.String("job_id", u.job.ID), slog.String("tenant", u.job.Tenant),
		slog.String("feature", u.job.FeatureName), slog.Int64("seq", ev.Seq))
	if ev.Type == store.EventStep {
		attrs = append(attrs, stepAttrs(u, ev)...)
	} else {
		attrs = append(attrs, slog.String("status", ev.Status))
		if store.JobStatus(ev.Status).Terminal() && u.job.FinishedAt != nil {
			attrs = append(attrs, slog.Int64("duration_ms", u.job.FinishedAt.Sub(u.job.CreatedAt).Milliseconds()))
		}
	}
	if ev.Reason != "" {
		attrs = append(attrs, slog.String("reason", ev.Reason))
	}
	if ev.Error != "" {
		attrs = append(attrs, slog.String("error", ev.Error)) // redacted by the caller
	}
	log.LogAttrs(ctx, level, msg, attrs...)
}

// eventLine returns the level and message of an event's line.
func eventLine(u *unit, ev *store.Event) (slog.Level, string) {
	if ev.Type != store.EventStep {
		switch st := store.JobStatus(ev.Status); {
		case st.Terminal():
			return slog.LevelInfo, "job finished"
		case st == store.JobPending && ev.Reason == "created":
			return slog.LevelInfo, "job created"
		case st == store.JobPending && ev.Reason == "resumed":
			return slog.LevelInfo, "job resumed"
		case st == store.JobRunning && ev.Reason == "":
			return slog.LevelInfo, "job started"
		case u.job.StuckAt != nil:
			return slog.LevelWarn, "job stuck" // the reaper's report: the status did not change
		default:
			return slog.LevelInfo, "job updated"
		}
	}
	switch store.StepStatus(ev.Status) {
	case store.StepRunning:
		return slog.LevelInfo, "step started"
	case store.StepSucceeded:
		return slog.LevelInfo, "step succeeded"
	case store.StepRetrying:
		return slog.LevelInfo, "step retrying"
	case store.StepFailed:
		return slog.LevelInfo, "step failed"
	case store.StepQueued:
		if ev.Reason != "" {
			return slog.LevelInfo, "step requeued"
		}
		return slog.LevelDebug, "step queued"
	case store.StepPending:
		return slog.LevelDebug, "step pending"
	case store.StepSkipped:
		return slog.LevelDebug, "step skipped"
	case store.StepCancelled:
		return slog.LevelDebug, "step cancelled"
	}
	return slog.LevelInfo, "step " + ev.Status
}

// stepAttrs are a step event's own attributes: the step, its service and attempt, and from the
// attempt record the change wrote (if any) the worker, the call's duration, error class and HTTP status.
func stepAttrs(u *unit, ev *store.Event) []slog.Attr {
	attrs := []slog.Attr{slog.String("step", ev.Step)}
	s := u.byName[ev.Step]
	if s != nil {
		attrs = append(attrs, slog.String("service", s.Service))
	}
	attrs = append(attrs, slog.Int("run", ev.Run), slog.Int("attempt", ev.Attempt), slog.String("status", ev.Status))
	var rec *store.Attempt
	for i := range u.attempts {
		if a := &u.attempts[i]; a.Step == ev.Step && a.Run == ev.Run && a.Attempt == ev.Attempt {
			rec = a
		}
	}
	status := store.StepStatus(ev.Status)
	if rec != nil {
		if rec.WorkerID != "" {
			attrs = append(attrs, slog.String("worker", rec.WorkerID))
		}
		if rec.FinishedAt != nil {
			attrs = append(attrs, slog.Int64("duration_ms", rec.FinishedAt.Sub(rec.StartedAt).Milliseconds()))
		}
	}
	class, httpStatus := "", 0
	switch {
	case rec != nil && rec.FinishedAt != nil:
		class, httpStatus = rec.ErrorClass, rec.HTTPStatus
	case s != nil && (status == store.StepFailed || status == store.StepRetrying):
		class = s.ErrorClass // failed without an attempt (e.g. its definition left the registry)
	}
	if class != "" {
		attrs = append(attrs, slog.String("error_class", class))
	}
	if httpStatus != 0 {
		attrs = append(attrs, slog.Int("http_status", httpStatus))
	}
	return attrs
}

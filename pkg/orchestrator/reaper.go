package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/store"
)

// ReapExpiredSteps re-queues RUNNING steps whose worker stopped heart-beating (died, hung or was
// stopped), in the same run so the service sees the same Idempotency-Key. A step that lost too many
// attempts fails. It returns how many steps it recovered or failed.
func (o *Orchestrator) ReapExpiredSteps(ctx context.Context, limit int) (int, error) {
	steps, err := o.store.ListExpiredSteps(ctx, o.now(), limit)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, st := range steps {
		recovered := false
		err := o.withJob(ctx, st.JobID, func(u *unit) error {
			recovered = false
			s := u.byName[st.Name]
			if s == nil || s.Status != store.StepRunning || s.Run != st.Run || s.Attempts != st.Attempts ||
				s.LeaseExpiresAt == nil || s.LeaseExpiresAt.After(u.now) {
				return nil // it moved on meanwhile
			}
			owner := s.LeaseOwner
			u.recordAttempt(store.Attempt{
				Step: s.Name, Run: s.Run, Attempt: s.Attempts, WorkerID: owner,
				Status: store.AttemptLost, ErrorClass: "worker_lost",
				Error:     fmt.Sprintf("worker %s stopped renewing its lease", owner),
				StartedAt: derefTime(s.StartedAt, u.now), FinishedAt: nowPtr(u.now),
			})
			s.Lost++
			recovered = true
			if s.Lost >= o.cfg.MaxLostAttempts {
				msg := fmt.Sprintf("%d attempts lost to workers that died or stopped", s.Lost)
				s.Error, s.ErrorClass = msg, "worker_lost"
				u.setStep(s, store.StepFailed, msg, "")
				u.advance()
				return nil
			}
			if u.job.Status.Terminal() {
				return nil
			}
			u.enqueue(s, nil, "", fmt.Sprintf("worker %s lost; re-running attempt", owner))
			return nil
		})
		if err != nil && !errors.Is(err, ErrJobNotFound) {
			return n, err
		}
		if err == nil && recovered {
			n++
		}
	}
	return n, nil
}

func derefTime(t *time.Time, def time.Time) time.Time {
	if t == nil {
		return def
	}
	return *t
}

// DetectStuckJobs reports jobs without progress for StuckJobAfter (status field and event) and
// recovers them by dispatching their waiting and ready steps again; jobs still stuck FailStuckAfter
// later are failed with the reason. It returns how many jobs it marked or failed.
func (o *Orchestrator) DetectStuckJobs(ctx context.Context, limit int) (int, error) {
	now := o.now()
	n := 0
	idle, err := o.store.ListIdleJobs(ctx, now.Add(-o.cfg.StuckJobAfter), limit)
	if err != nil {
		return 0, err
	}
	for _, j := range idle {
		acted := false
		err := o.withJob(ctx, j.ID, func(u *unit) error {
			acted = false
			if u.job.Status.Terminal() || u.job.StuckAt != nil || u.now.Sub(u.job.UpdatedAt) < o.cfg.StuckJobAfter {
				return nil
			}
			for _, s := range u.steps {
				if s.Status == store.StepRunning && s.LeaseExpiresAt != nil && s.LeaseExpiresAt.After(u.now) {
					return nil // a long call on a live lease is progress
				}
			}
			reason := fmt.Sprintf("stuck: no progress for %s; re-dispatching its steps", u.now.Sub(u.job.UpdatedAt).Round(time.Second))
			u.job.StuckAt, u.job.StuckReason = nowPtr(u.now), reason
			u.jobDirt = true
			u.events = append(u.events, store.Event{
				JobID: u.job.ID, Type: store.EventJob, Status: string(u.job.Status), Reason: reason, At: u.now,
			})
			for _, s := range u.steps {
				if s.Status.Waiting() {
					u.redispatch(s)
				}
			}
			stuckAt := u.job.StuckAt
			u.advance()
			// advance may have made progress (queued a ready step), which clears StuckAt; keep the mark:
			// the job is reported stuck until one of its steps actually runs.
			if u.job.StuckAt == nil && !u.job.Status.Terminal() {
				u.job.StuckAt, u.job.StuckReason = stuckAt, reason
			}
			acted = true
			return nil
		})
		if err != nil && !errors.Is(err, ErrJobNotFound) {
			return n, err
		}
		if err == nil && acted {
			n++
		}
	}
	stuck, err := o.store.ListStuckJobs(ctx, now.Add(-o.cfg.FailStuckAfter), limit)
	if err != nil {
		return n, err
	}
	for _, j := range stuck {
		acted := false
		err := o.withJob(ctx, j.ID, func(u *unit) error {
			acted = false
			if u.job.Status.Terminal() || u.job.StuckAt == nil || u.now.Sub(*u.job.StuckAt) < o.cfg.FailStuckAfter {
				return nil
			}
			msg := fmt.Sprintf("stuck: no progress for %s after recovery", u.now.Sub(u.job.UpdatedAt).Round(time.Second))
			for _, s := range u.steps {
				if !s.Status.Terminal() {
					s.Error = msg
					u.setStep(s, store.StepFailed, msg, "job stuck")
				}
			}
			u.setJob(store.JobFailed, msg, "stuck")
			acted = true
			return nil
		})
		if err != nil && !errors.Is(err, ErrJobNotFound) {
			return n, err
		}
		if err == nil && acted {
			n++
		}
	}
	return n, nil
}

package orchestrator

import (
	"errors"
	"fmt"

	"github.com/cao-run/cao/pkg/store"
)

// ErrIllegalMove means a change tried a status move the state machine does not allow: a bug, never
// written to the database.
var ErrIllegalMove = errors.New("illegal status move")

// stepMoves is the one table of the moves a step's status may make. Every change of a step's status
// goes through unit.setStep, which checks it here.
var stepMoves = map[store.StepStatus][]store.StepStatus{
	// created; queued when its needs succeeded; skipped after a failure; failed when its job is
	// failed as stuck; cancelled with its job.
	store.StepPending: {store.StepPending, store.StepQueued, store.StepSkipped, store.StepFailed, store.StepCancelled},
	// started; or ended without running (failure upstream, registry change, stuck job, cancel).
	store.StepQueued:   {store.StepRunning, store.StepSkipped, store.StepFailed, store.StepCancelled, store.StepPending},
	store.StepRetrying: {store.StepRunning, store.StepSkipped, store.StepFailed, store.StepCancelled, store.StepPending},
	// finished; retried later; put back (interrupted, lost); cancelled; reset by a resume of a stuck job.
	store.StepRunning: {store.StepSucceeded, store.StepFailed, store.StepRetrying, store.StepQueued, store.StepCancelled, store.StepPending},
	// Ended steps move only when a resume re-runs them.
	store.StepSucceeded: {store.StepPending},
	store.StepFailed:    {store.StepPending},
	store.StepSkipped:   {store.StepPending},
	store.StepCancelled: {store.StepPending},
}

// jobMoves is the one table of the moves a job's status may make (unit.setJob checks it).
var jobMoves = map[store.JobStatus][]store.JobStatus{
	store.JobPending:   {store.JobPending, store.JobRunning, store.JobCompleted, store.JobFailed, store.JobCancelled},
	store.JobRunning:   {store.JobCompleted, store.JobFailed, store.JobCancelled},
	store.JobCompleted: {},
	// A resume makes a failed or cancelled job pending again.
	store.JobFailed:    {store.JobPending},
	store.JobCancelled: {store.JobPending},
}

// legal reports whether moves allows from -> to.
func legal[S comparable](moves map[S][]S, from, to S) bool {
	for _, s := range moves[from] {
		if s == to {
			return true
		}
	}
	return false
}

// illegalStep records an illegal move of step s; the unit then refuses to apply.
func (u *unit) illegalStep(s *store.Step, to store.StepStatus) {
	if u.illegal == nil {
		u.illegal = fmt.Errorf("%w: step %s of job %s from %s to %s", ErrIllegalMove, s.Name, u.job.ID, s.Status, to)
	}
}

// illegalJob records an illegal move of the job.
func (u *unit) illegalJob(to store.JobStatus) {
	if u.illegal == nil {
		u.illegal = fmt.Errorf("%w: job %s from %s to %s", ErrIllegalMove, u.job.ID, u.job.Status, to)
	}
}

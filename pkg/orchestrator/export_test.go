package orchestrator

import (
	"context"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// FinishAttempt records the attempt's outcome and moves the DAG on. ErrFenced means the result came
// too late (the step was reclaimed, cancelled or finished by someone else) and was not recorded.
func (o *Orchestrator) FinishAttempt(ctx context.Context, a *Attempt, out Outcome) error {
	_, _, err := o.FinishAndContinue(ctx, a, out, nil)
	return err
}

// CarriedJob decodes the snapshot step task p carries (carry.go): its job and steps; false if it
// carries none this release reads.
func CarriedJob(p task.StepPayload) (*store.Job, []store.Step, bool) {
	sn, ok := decodeCarried(p.Snap, p.JobID)
	if !ok {
		return nil, nil, false
	}
	return &sn.job, sn.steps, true
}

package orchestrator

import "context"

// FinishAttempt records the attempt's outcome and moves the DAG on. ErrFenced means the result came
// too late (the step was reclaimed, cancelled or finished by someone else) and was not recorded.
func (o *Orchestrator) FinishAttempt(ctx context.Context, a *Attempt, out Outcome) error {
	_, _, err := o.FinishAndContinue(ctx, a, out, nil)
	return err
}

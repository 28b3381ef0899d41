package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cao-run/cao/pkg/store"
)

// StepData is the template data of a step's next attempt: its job's input and the outputs of the
// job's succeeded steps, as StartAttempt returns them with the claim.
type StepData struct {
	Input   json.RawMessage
	Outputs map[string]json.RawMessage
}

// Peek reads the template data the attempt of t will see, without claiming the step (one read).
// Admission needs it before the claim when a service's limits depend on the call: a budget whose
// reserve is a template, a concurrency_key. ErrStale means the task no longer matches its step.
// The data cannot change between Peek and the claim: the input changes only by a resume, which
// starts a new run (and makes this task stale), and a waiting step's upstream steps have finished.
func (o *Orchestrator) Peek(ctx context.Context, t *Target) (*StepData, error) {
	p := t.Payload
	job, steps, err := o.liveJob(ctx, p.JobID)
	if err != nil {
		return nil, err
	}
	d := &StepData{Input: job.Input, Outputs: map[string]json.RawMessage{}}
	waits := false
	for i := range steps {
		s := &steps[i]
		if s.Name == p.Step {
			waits = waitsFor(s, p)
		}
		if s.Status == store.StepSucceeded {
			d.Outputs[s.Name] = s.Output
		}
	}
	if !waits {
		return nil, fmt.Errorf("%w: step no longer waits for attempt %d of run %d", ErrStale, p.Attempt, p.Run)
	}
	return d, nil
}

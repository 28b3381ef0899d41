package runner

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/render"
)

// templateData builds the template data of an attempt: input, outputs of succeeded steps, ids.
func templateData(a *orchestrator.Attempt) (render.Data, error) {
	return templateDataOf(a.Payload.JobID, a.Payload.Step, a.Payload.Attempt, a.Payload.Run, a.Input, a.Outputs)
}

// templateDataOf builds the template data of an attempt from its job's input and outputs.
func templateDataOf(jobID, step string, attempt, run int, input json.RawMessage, outputs map[string]json.RawMessage) (render.Data, error) {
	d := render.Data{JobID: jobID, StepName: step, Attempt: attempt, Run: run, Steps: make(map[string]any, len(outputs))}
	var err error
	if d.Input, err = decode(input); err != nil {
		return d, fmt.Errorf("decode job input: %w", err)
	}
	for name, out := range outputs {
		v, err := decode(out)
		if err != nil {
			return d, fmt.Errorf("decode output of step %s: %w", name, err)
		}
		d.Steps[name] = v
	}
	return d, nil
}

func decode(b json.RawMessage) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

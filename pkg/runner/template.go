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
	d := render.Data{JobID: a.Payload.JobID, StepName: a.Payload.Step, Attempt: a.Payload.Attempt, Run: a.Payload.Run,
		Steps: make(map[string]any, len(a.Outputs))}
	var err error
	if d.Input, err = decode(a.Input); err != nil {
		return d, fmt.Errorf("decode job input: %w", err)
	}
	for name, out := range a.Outputs {
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

package runner

import (
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/render"
)

// templateData is the template data of an attempt: input, outputs of succeeded steps, ids. The
// input and outputs are decoded only if a template reads them (render.Stored).
func templateData(a *orchestrator.Attempt) render.Data {
	return render.Stored(a.Payload.JobID, a.Payload.Step, a.Payload.Attempt, a.Payload.Run, a.Input, a.Outputs)
}

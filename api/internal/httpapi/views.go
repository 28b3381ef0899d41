package httpapi

import (
	"sort"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/view"
)

// jobObject renders a job view as the contract's job object (REST and the WebSocket snapshot).
func jobObject(v *orchestrator.JobView) view.Job {
	return view.Full(&v.Job, v.Steps, v.Attempts, v.Webhooks)
}

type featureJSON struct {
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	Input       any               `json:"input_schema"`
	Steps       []featureStepJSON `json:"steps"`
}

type featureStepJSON struct {
	Name        string   `json:"name"`
	Service     string   `json:"service"`
	ServiceKind string   `json:"service_kind"`
	Queue       string   `json:"queue"`
	Needs       []string `json:"needs"`
	Timeout     string   `json:"timeout"`
	MaxAttempts int      `json:"max_attempts"`
	MaxConc     int      `json:"max_concurrency"`
}

// featuresJSON lists the features and their step graphs; no service URLs or headers (secrets).
func featuresJSON(reg *registry.Registry) []featureJSON {
	out := []featureJSON{}
	for _, name := range reg.FeatureNames() {
		f := reg.Features[name]
		fj := featureJSON{Name: f.Name, Description: f.Description, Steps: []featureStepJSON{}}
		if f.Input != nil {
			fj.Input = f.Input
		}
		for _, st := range f.Steps {
			needs := append([]string{}, st.Needs...)
			sort.Strings(needs)
			svc := reg.Services[st.Service]
			fj.Steps = append(fj.Steps, featureStepJSON{
				Name: st.Name, Service: st.Service, ServiceKind: svc.Kind, Queue: st.Queue, Needs: needs,
				Timeout: st.Timeout.String(), MaxAttempts: st.Retry.MaxAttempts, MaxConc: svc.MaxConcurrency,
			})
		}
		out = append(out, fj)
	}
	return out
}

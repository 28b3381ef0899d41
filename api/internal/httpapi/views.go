package httpapi

import (
	"encoding/json"
	"sort"
	"time"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
)

// jobJSON is the contract's job object.
type jobJSON struct {
	ID           string          `json:"id"`
	Tenant       string          `json:"tenant"`
	FeatureName  string          `json:"feature_name"`
	Status       store.JobStatus `json:"status"`
	InputData    json.RawMessage `json:"input_data"`
	InputVersion int             `json:"input_version"`
	Output       json.RawMessage `json:"output"`
	Error        *string         `json:"error"`
	Stuck        bool            `json:"stuck"`
	StuckReason  string          `json:"stuck_reason,omitempty"`
	LastSeq      int64           `json:"last_seq"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	StartedAt    *time.Time      `json:"started_at"`
	FinishedAt   *time.Time      `json:"finished_at"`
	Steps        []stepJSON      `json:"steps,omitempty"`
}

// stepJSON is the contract's step object.
type stepJSON struct {
	Name          string           `json:"name"`
	Service       string           `json:"service"`
	Queue         string           `json:"queue"`
	Needs         []string         `json:"needs"`
	Status        store.StepStatus `json:"status"`
	Attempts      int              `json:"attempts"`
	Run           int              `json:"run"`
	StartedAt     *time.Time       `json:"started_at"`
	FinishedAt    *time.Time       `json:"finished_at"`
	Error         *string          `json:"error"`
	ErrorClass    string           `json:"error_class,omitempty"`
	Output        json.RawMessage  `json:"output"`
	NextAttemptAt *time.Time       `json:"next_attempt_at,omitempty"`
	History       []attemptJSON    `json:"attempt_history"`
}

type attemptJSON struct {
	Run        int        `json:"run"`
	Attempt    int        `json:"attempt"`
	Status     string     `json:"status"`
	WorkerID   string     `json:"worker_id"`
	ErrorClass string     `json:"error_class,omitempty"`
	Error      string     `json:"error,omitempty"`
	HTTPStatus int        `json:"http_status,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func strOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func rawOrNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}

func summaryJSON(j *store.Job) jobJSON {
	return jobJSON{
		ID: j.ID, Tenant: j.Tenant, FeatureName: j.FeatureName, Status: j.Status, InputData: rawOrNull(j.Input), InputVersion: j.InputVersion,
		Output: rawOrNull(j.Output), Error: strOrNil(j.Error), Stuck: j.StuckAt != nil, StuckReason: j.StuckReason,
		LastSeq: j.LastSeq, CreatedAt: j.CreatedAt.UTC(), UpdatedAt: j.UpdatedAt.UTC(), StartedAt: utc(j.StartedAt),
		FinishedAt: utc(j.FinishedAt),
	}
}

// JobJSON renders a job view as the contract's job object (also used by the WebSocket snapshot).
func JobJSON(v *orchestrator.JobView) any {
	j := summaryJSON(&v.Job)
	hist := map[string][]attemptJSON{}
	for _, a := range v.Attempts {
		hist[a.Step] = append(hist[a.Step], attemptJSON{
			Run: a.Run, Attempt: a.Attempt, Status: a.Status, WorkerID: a.WorkerID, ErrorClass: a.ErrorClass,
			Error: a.Error, HTTPStatus: a.HTTPStatus, StartedAt: a.StartedAt.UTC(), FinishedAt: utc(a.FinishedAt),
		})
	}
	j.Steps = make([]stepJSON, len(v.Steps))
	for i, s := range v.Steps {
		needs := s.Needs
		if needs == nil {
			needs = []string{}
		}
		h := hist[s.Name]
		if h == nil {
			h = []attemptJSON{}
		}
		j.Steps[i] = stepJSON{
			Name: s.Name, Service: s.Service, Queue: s.Queue, Needs: needs, Status: s.Status, Attempts: s.Attempts,
			Run: s.Run, StartedAt: utc(s.StartedAt), FinishedAt: utc(s.FinishedAt), Error: strOrNil(s.Error),
			ErrorClass: s.ErrorClass, Output: rawOrNull(s.Output), NextAttemptAt: utc(s.NextAttemptAt), History: h,
		}
	}
	return j
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

// Package view renders CAO's state as the public contract's JSON objects (the job, step and attempt
// objects), for the REST API, the WebSocket snapshot and the completion webhooks alike.
package view

import (
	"encoding/json"
	"time"

	"github.com/cao-run/cao/pkg/store"
)

// Job is the contract's job object.
type Job struct {
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
	Webhook      *Webhook        `json:"webhook,omitempty"`
	Steps        []Step          `json:"steps,omitempty"`
}

// Webhook is the delivery state of a job's latest completion webhook.
type Webhook struct {
	URL         string     `json:"url"`
	Type        string     `json:"type"`
	Attempts    int        `json:"attempts"`
	LastStatus  int        `json:"last_status"`
	LastError   string     `json:"last_error,omitempty"`
	DeliveredAt *time.Time `json:"delivered_at"`
	GaveUpAt    *time.Time `json:"gave_up_at,omitempty"`
}

// Step is the contract's step object.
type Step struct {
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
	History       []Attempt        `json:"attempt_history"`
	// Waiting says why a QUEUED step has not started: its service is saturated, its budget is
	// spent. Only in GET /api/v1/jobs/{id}; absent when the step is not known to wait.
	Waiting *Waiting `json:"waiting,omitempty"`
}

// Waiting is why a step waits for its service, as of the answer.
type Waiting struct {
	Reason  string     `json:"reason"`  // slot, tenant_slot, key_slot, rate_budget, hold (package waits)
	Service string     `json:"service"` // the service it waits for
	Message string     `json:"message"` // for people: "waiting for a slot on llm: 8/8 in use"
	Since   time.Time  `json:"since"`   // when it first waited
	Until   *time.Time `json:"until,omitempty"`
}

// Attempt is one entry of a step's attempt_history.
type Attempt struct {
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

// Summary is the job object without steps (job lists, webhook payloads).
func Summary(j *store.Job) Job {
	return Job{
		ID: j.ID, Tenant: j.Tenant, FeatureName: j.FeatureName, Status: j.Status, InputData: rawOrNull(j.Input), InputVersion: j.InputVersion,
		Output: rawOrNull(j.Output), Error: strOrNil(j.Error), Stuck: j.StuckAt != nil, StuckReason: j.StuckReason,
		LastSeq: j.LastSeq, CreatedAt: j.CreatedAt.UTC(), UpdatedAt: j.UpdatedAt.UTC(), StartedAt: utc(j.StartedAt),
		FinishedAt: utc(j.FinishedAt),
	}
}

// Full is the job object with its steps, their attempt history and the webhook's delivery state
// (deliveries oldest first; the latest is shown).
func Full(job *store.Job, steps []store.Step, attempts []store.Attempt, webhooks []store.WebhookDelivery) Job {
	j := Summary(job)
	if n := len(webhooks); n > 0 {
		d := webhooks[n-1]
		j.Webhook = &Webhook{URL: d.URL, Type: d.Type, Attempts: d.Attempts, LastStatus: d.LastStatus,
			LastError: d.LastError, DeliveredAt: utc(d.DeliveredAt), GaveUpAt: utc(d.GaveUpAt)}
	}
	hist := map[string][]Attempt{}
	for _, a := range attempts {
		hist[a.Step] = append(hist[a.Step], Attempt{
			Run: a.Run, Attempt: a.Attempt, Status: a.Status, WorkerID: a.WorkerID, ErrorClass: a.ErrorClass,
			Error: a.Error, HTTPStatus: a.HTTPStatus, StartedAt: a.StartedAt.UTC(), FinishedAt: utc(a.FinishedAt),
		})
	}
	j.Steps = make([]Step, len(steps))
	for i, s := range steps {
		needs := s.Needs
		if needs == nil {
			needs = []string{}
		}
		h := hist[s.Name]
		if h == nil {
			h = []Attempt{}
		}
		j.Steps[i] = Step{
			Name: s.Name, Service: s.Service, Queue: s.Queue, Needs: needs, Status: s.Status, Attempts: s.Attempts,
			Run: s.Run, StartedAt: utc(s.StartedAt), FinishedAt: utc(s.FinishedAt), Error: strOrNil(s.Error),
			ErrorClass: s.ErrorClass, Output: rawOrNull(s.Output), NextAttemptAt: utc(s.NextAttemptAt), History: h,
		}
	}
	return j
}

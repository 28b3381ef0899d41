package client

import (
	"encoding/json"
	"time"
)

// JobStatus is a job's status: PENDING RUNNING COMPLETED FAILED CANCELLED.
type JobStatus string

// Job statuses.
const (
	JobPending   JobStatus = "PENDING"
	JobRunning   JobStatus = "RUNNING"
	JobCompleted JobStatus = "COMPLETED"
	JobFailed    JobStatus = "FAILED"
	JobCancelled JobStatus = "CANCELLED"
)

// Terminal reports whether a job in this status has ended (it may still be resumed).
func (s JobStatus) Terminal() bool {
	return s == JobCompleted || s == JobFailed || s == JobCancelled
}

// StepStatus is a step's status: PENDING QUEUED RUNNING RETRYING SUCCEEDED FAILED SKIPPED CANCELLED.
type StepStatus string

// Step statuses.
const (
	StepPending   StepStatus = "PENDING"
	StepQueued    StepStatus = "QUEUED"
	StepRunning   StepStatus = "RUNNING"
	StepRetrying  StepStatus = "RETRYING"
	StepSucceeded StepStatus = "SUCCEEDED"
	StepFailed    StepStatus = "FAILED"
	StepSkipped   StepStatus = "SKIPPED"
	StepCancelled StepStatus = "CANCELLED"
)

// Terminal reports whether a step in this status is done for its current run.
func (s StepStatus) Terminal() bool {
	return s == StepSucceeded || s == StepFailed || s == StepSkipped || s == StepCancelled
}

// Job is the contract's job object. Steps is filled by Get and in the Watch snapshot; List leaves it
// empty. Error is empty when the job has none.
type Job struct {
	ID           string          `json:"id"`
	Tenant       string          `json:"tenant"`
	FeatureName  string          `json:"feature_name"`
	Status       JobStatus       `json:"status"`
	InputData    json.RawMessage `json:"input_data"`
	InputVersion int             `json:"input_version,omitempty"`
	Output       json.RawMessage `json:"output"`
	Error        string          `json:"error,omitempty"`
	Stuck        bool            `json:"stuck,omitempty"`
	StuckReason  string          `json:"stuck_reason,omitempty"`
	LastSeq      int64           `json:"last_seq"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	StartedAt    *time.Time      `json:"started_at"`
	FinishedAt   *time.Time      `json:"finished_at"`
	// Webhook is the state of the latest completion-webhook delivery (nil without webhook_url).
	Webhook *Webhook `json:"webhook,omitempty"`
	Steps   []Step   `json:"steps,omitempty"`
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

// Step returns the step named name, or nil.
func (j *Job) Step(name string) *Step {
	for i := range j.Steps {
		if j.Steps[i].Name == name {
			return &j.Steps[i]
		}
	}
	return nil
}

// Step is the contract's step object.
type Step struct {
	Name           string          `json:"name"`
	Service        string          `json:"service"`
	Queue          string          `json:"queue"`
	Needs          []string        `json:"needs"`
	Status         StepStatus      `json:"status"`
	Attempts       int             `json:"attempts"`
	Run            int             `json:"run"`
	StartedAt      *time.Time      `json:"started_at"`
	FinishedAt     *time.Time      `json:"finished_at"`
	Error          string          `json:"error,omitempty"`
	ErrorClass     string          `json:"error_class,omitempty"`
	Output         json.RawMessage `json:"output"`
	NextAttemptAt  *time.Time      `json:"next_attempt_at,omitempty"`
	AttemptHistory []Attempt       `json:"attempt_history"`
	// Waiting says why a QUEUED step has not started (GetJob only; nil when not known to wait).
	Waiting *Waiting `json:"waiting,omitempty"`
}

// Waiting is why a step waits for its service.
type Waiting struct {
	Reason  string     `json:"reason"` // slot, tenant_slot, key_slot, rate_budget, hold
	Service string     `json:"service"`
	Message string     `json:"message"` // "waiting for a slot on llm: 8/8 in use"
	Since   time.Time  `json:"since"`
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

// Message types.
const (
	MessageSnapshot = "snapshot"
	MessageJob      = "job"
	MessageStep     = "step"
)

// Message is one WebSocket message, and one event of GET /jobs/{id}/events (those are never
// snapshots). A snapshot carries Job (the same object as Get, at seq Seq); a job message carries the
// job's new Status; a step message the Step's new Status and Attempt.
type Message struct {
	Type    string    `json:"type"`
	Seq     int64     `json:"seq"`
	JobID   string    `json:"job_id,omitempty"`
	Job     *Job      `json:"job,omitempty"`
	Step    string    `json:"step,omitempty"`
	Status  string    `json:"status,omitempty"`
	Attempt *int      `json:"attempt,omitempty"`
	Run     int       `json:"run,omitempty"`
	At      time.Time `json:"at,omitzero"`
	Error   string    `json:"error,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// Terminal reports whether the message ends its job: a job message with a terminal status, or a
// snapshot of a job that has ended.
func (m Message) Terminal() bool {
	switch m.Type {
	case MessageJob:
		return JobStatus(m.Status).Terminal()
	case MessageSnapshot:
		return m.Job != nil && m.Job.Status.Terminal()
	}
	return false
}

// Apply updates j with what message m says (a snapshot replaces j): statuses, attempts, runs,
// start and finish times, errors. Outputs are not in messages; Get has them. It is how a watcher
// keeps a live picture of a job between its snapshot and the final Get.
func (j *Job) Apply(m Message) {
	switch m.Type {
	case MessageSnapshot:
		if m.Job != nil {
			*j = *m.Job
		}
	case MessageJob:
		st := JobStatus(m.Status)
		j.Status = st
		j.LastSeq = max(j.LastSeq, m.Seq)
		at := m.At
		switch {
		case st == JobRunning && j.StartedAt == nil:
			j.StartedAt = &at
		case st == JobPending:
			j.FinishedAt, j.Error = nil, ""
		case st.Terminal():
			j.FinishedAt, j.Error = &at, m.Error
		}
	case MessageStep:
		j.LastSeq = max(j.LastSeq, m.Seq)
		s := j.Step(m.Step)
		if s == nil {
			j.Steps = append(j.Steps, Step{Name: m.Step})
			s = &j.Steps[len(j.Steps)-1]
		}
		st := StepStatus(m.Status)
		at := m.At
		if m.Run > s.Run {
			s.Run, s.StartedAt, s.FinishedAt, s.Error = m.Run, nil, nil, ""
		}
		if m.Attempt != nil {
			s.Attempts = *m.Attempt
		}
		s.Status = st
		switch {
		case st == StepPending:
			s.StartedAt, s.FinishedAt, s.Error = nil, nil, ""
		case st == StepRunning && s.StartedAt == nil:
			s.StartedAt = &at
		case st == StepRetrying:
			s.Error = m.Error
		case st.Terminal():
			s.FinishedAt, s.Error = &at, m.Error
		}
	}
}

// StartRequest is the body of POST /api/v1/jobs.
type StartRequest struct {
	// Feature is the registered feature to run (feature_name).
	Feature string
	// Input is the job's input_data: any value encoding/json can encode, or a json.RawMessage.
	// Nil sends no input_data.
	Input any
	// IdempotencyKey, when set, is sent as the Idempotency-Key header: a repeat with the same key
	// and body answers the first job instead of creating another (and makes Start retryable).
	IdempotencyKey string
	// WebhookURL, when set, asks for a completion webhook (webhook_url).
	WebhookURL string
}

// Accepted is the 202 answer of Start, Resume and Cancel. Cancel fills only JobID and Status.
type Accepted struct {
	JobID      string    `json:"job_id"`
	Status     JobStatus `json:"status"`
	MonitorURL string    `json:"monitor_url,omitempty"`
	UIURL      string    `json:"ui_url,omitempty"`
	// Replayed is true when Start answered an earlier job with the same Idempotency-Key.
	Replayed bool `json:"replayed,omitempty"`
}

// ResumeRequest is the optional body of POST /api/v1/jobs/{id}/resume.
type ResumeRequest struct {
	// FromStep re-runs this step and every step downstream of it, even those that SUCCEEDED.
	FromStep string
	// Input, when not nil, replaces the job's input_data (checked against the feature's schema).
	Input any
}

// ListOptions filter GET /api/v1/jobs. Zero values are left out.
type ListOptions struct {
	Status  JobStatus // one status
	Feature string
	Tenant  string // admin keys only
	Limit   int    // page size, 1 to 500 (server default 50)
	Cursor  string // a Page's NextCursor
}

// Page is one page of jobs, newest first; NextCursor is empty on the last page.
type Page struct {
	Jobs       []Job  `json:"jobs"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Feature is one entry of GET /api/v1/features: a feature and its step graph (no secrets).
type Feature struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"input_schema,omitempty"`
	Steps       []FeatureStep   `json:"steps"`
}

// FeatureStep is one step of a feature's graph.
type FeatureStep struct {
	Name           string   `json:"name"`
	Service        string   `json:"service"`
	ServiceKind    string   `json:"service_kind"`
	Queue          string   `json:"queue"`
	Needs          []string `json:"needs"`
	Timeout        string   `json:"timeout"`
	MaxAttempts    int      `json:"max_attempts"`
	MaxConcurrency int      `json:"max_concurrency"`
}

// Ticket is a single-use WebSocket ticket for one job (valid 60 s).
type Ticket struct {
	Ticket    string    `json:"ticket"`
	ExpiresAt time.Time `json:"expires_at"`
}

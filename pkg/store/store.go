// Package store defines CAO's durable state (jobs, steps, attempts, events, outbox, idempotency keys)
// and the storage interface the orchestrator uses. Postgres is the source of truth in the split
// deployment and SQLite in the embedded one; both are implemented by package sqlstore and checked by
// the shared conformance suite in package storetest.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Sentinel errors returned by every Store implementation; adapters translate driver errors into these.
var (
	// ErrNotFound means the requested row does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict means a compare-and-set lost: the row no longer matches what the caller read.
	ErrConflict = errors.New("store: conflict")
	// ErrDuplicate means a unique key is already taken.
	ErrDuplicate = errors.New("store: duplicate key")
	// ErrUnavailable means the database cannot be reached right now (retry later).
	ErrUnavailable = errors.New("store: database unavailable")
)

// JobStatus is the lifecycle state of a job.
type JobStatus string

// Job statuses (fixed by the public contract).
const (
	JobPending   JobStatus = "PENDING"
	JobRunning   JobStatus = "RUNNING"
	JobCompleted JobStatus = "COMPLETED"
	JobFailed    JobStatus = "FAILED"
	JobCancelled JobStatus = "CANCELLED"
)

// Terminal reports whether no further transition is expected without a resume.
func (s JobStatus) Terminal() bool {
	return s == JobCompleted || s == JobFailed || s == JobCancelled
}

// Valid reports whether s is one of the contract's job statuses.
func (s JobStatus) Valid() bool {
	switch s {
	case JobPending, JobRunning, JobCompleted, JobFailed, JobCancelled:
		return true
	}
	return false
}

// StepStatus is the lifecycle state of one step of a job.
type StepStatus string

// Step statuses (fixed by the public contract).
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

// Terminal reports whether the step will not run again in its current run.
func (s StepStatus) Terminal() bool {
	return s == StepSucceeded || s == StepFailed || s == StepSkipped || s == StepCancelled
}

// Waiting reports whether the step has a task in (or due for) the queue.
func (s StepStatus) Waiting() bool { return s == StepQueued || s == StepRetrying }

// DefaultTenant owns the jobs of bare keys, of authentication off and of dev mode, and every job
// stored before tenants existed; a job or key written with an empty tenant gets it.
const DefaultTenant = "default"

// Scope is the set of tenants a query may see. The API builds it from the caller's key: a tenant's
// key sees its own tenant's jobs, an admin's key every tenant's (or one, with ?tenant=). The zero
// Scope sees nothing, so a scope that was forgotten fails closed.
type Scope struct {
	Tenant string // the tenant seen, unless All
	All    bool   // every tenant (admins, and the core's own work on jobs it was handed by id)
}

// AllTenants is the scope of admins and of the core itself.
var AllTenants = Scope{All: true}

// TenantScope is the scope of one tenant.
func TenantScope(tenant string) Scope { return Scope{Tenant: tenant} }

// Job is one execution of a feature.
type Job struct {
	ID           string
	Tenant       string // the tenant of the key that created the job
	FeatureName  string
	Status       JobStatus
	Input        json.RawMessage // current input (replaced by resume with input_data)
	InputVersion int             // 1 at creation, +1 per resume that replaced the input
	Output       json.RawMessage // outputs of the steps by name, set when COMPLETED
	Error        string
	LastSeq      int64 // seq of the newest event of this job
	// Version counts the changes applied to the job (Store.Apply); a change names the version it
	// was computed from, so two changes computed from the same state cannot both be applied.
	Version int64
	// StuckAt is set when the reaper found no progress beyond the threshold; cleared on progress.
	StuckAt        *time.Time
	StuckReason    string
	IdempotencyKey string
	// WebhookURL, when set, receives a signed POST each time the job becomes terminal.
	WebhookURL string
	CreatedAt  time.Time
	UpdatedAt  time.Time // last state change of the job or any of its steps (progress)
	StartedAt  *time.Time
	FinishedAt *time.Time
}

// Step is the state of one step of a job in its current run.
type Step struct {
	JobID    string
	Name     string
	Position int // order in the feature definition
	Service  string
	Queue    string
	Needs    []string
	Status   StepStatus
	Run      int // 1 at creation, +1 each time a resume re-executes the step
	Attempts int // attempts started in the current run
	Lost     int // attempts of the current run abandoned by a dead or stopped worker
	// LeaseOwner and LeaseExpiresAt describe the RUNNING attempt's heartbeat lease.
	LeaseOwner     string
	LeaseExpiresAt *time.Time
	NextAttemptAt  *time.Time // when RETRYING: when the next attempt is due
	Output         json.RawMessage
	Error          string
	ErrorClass     string
	CreatedAt      time.Time
	UpdatedAt      time.Time
	StartedAt      *time.Time
	FinishedAt     *time.Time
}

// StepExpect is the state a compare-and-set update of a step expects to find.
type StepExpect struct {
	Status   StepStatus
	Run      int
	Attempts int
}

// Expect returns the StepExpect matching s as it is now.
func (s *Step) Expect() StepExpect {
	return StepExpect{Status: s.Status, Run: s.Run, Attempts: s.Attempts}
}

// Attempt outcome values.
const (
	AttemptRunning     = "running"
	AttemptSucceeded   = "succeeded"
	AttemptFailed      = "failed"
	AttemptLost        = "lost"        // the worker died or stopped heart-beating
	AttemptCancelled   = "cancelled"   // the job was cancelled during the call
	AttemptInterrupted = "interrupted" // graceful shutdown put the step back
)

// Attempt records one try of a step.
type Attempt struct {
	JobID      string
	Step       string
	Run        int
	Attempt    int
	WorkerID   string
	Status     string // one of the Attempt* outcome values
	ErrorClass string
	Error      string
	HTTPStatus int
	StartedAt  time.Time
	FinishedAt *time.Time
}

// Event types.
const (
	EventJob  = "job"
	EventStep = "step"
)

// Event is one entry of a job's ordered change log; Seq increases by one per job with no gaps.
type Event struct {
	JobID   string
	Seq     int64
	Type    string // EventJob or EventStep
	Step    string // for step events
	Status  string
	Attempt int
	Run     int
	Error   string
	Reason  string // e.g. why a job was marked stuck
	At      time.Time
}

// OutboxTask is a queue task that a committed state change requires; a relay moves it to Redis.
type OutboxTask struct {
	ID        int64
	TaskID    string // deterministic asynq task id
	Queue     string
	TypeName  string
	Payload   []byte
	ProcessAt *time.Time
	CreatedAt time.Time
	// Carried is never stored: it is the job's snapshot that the copy of a task to run now, handed
	// to the queue straight after its commit, carries; dispatch.Relay.Dispatch joins it to the
	// payload (task.WithSnap) as it enqueues the task. The stored row is plain.
	Carried []byte
}

// IdempotencyRecord remembers a POST /jobs Idempotency-Key.
type IdempotencyRecord struct {
	Tenant      string // keys are scoped per tenant
	Key         string
	RequestHash string
	JobID       string // empty while the first request is still creating the job
	CreatedAt   time.Time
	ExpiresAt   time.Time
}

// WebhookDelivery is one completion webhook to deliver at least once: the change that ends a job
// inserts it with the payload as it will be sent, and deliverers claim it until it is delivered or
// given up.
type WebhookDelivery struct {
	ID            string // the webhook-id header: the same on every attempt
	JobID         string
	URL           string
	Type          string // job.completed, job.failed or job.cancelled
	Payload       []byte // the exact body sent
	Attempts      int    // attempts claimed so far
	LastStatus    int    // HTTP status of the last attempt (0: none, or no answer)
	LastError     string
	NextAttemptAt time.Time // when due; while claimed, when the claim expires
	DeliveredAt   *time.Time
	GaveUpAt      *time.Time
	CreatedAt     time.Time
}

// JobInput is a past or current input of a job (resume can replace it).
type JobInput struct {
	JobID     string
	Version   int
	Input     json.RawMessage
	CreatedAt time.Time
}

// Cursor is a position in the job list ordered by (CreatedAt, ID) descending.
type Cursor struct {
	CreatedAt time.Time
	ID        string
}

// JobFilter selects jobs for ListJobs.
type JobFilter struct {
	Scope   Scope     // whose jobs (the zero Scope lists nothing)
	Status  JobStatus // empty: any
	Feature string    // empty: any
	Limit   int       // 1..1000
	After   *Cursor   // nil: from the newest
}

// StepChange is one step as a change leaves it, and the state the change expects to find.
type StepChange struct {
	Step   Step
	Expect StepExpect
}

// Change is everything one state transition of one job writes. Store.Apply writes it atomically or
// not at all.
type Change struct {
	// Job is the job as the change leaves it: every mutable field is written.
	Job *Job
	// Create makes Apply insert the job and its Steps instead of updating them.
	Create bool
	// Version is the job's Version the change was computed from; when the stored job has another,
	// Apply writes nothing and returns ErrConflict. Ignored with Create. Apply sets Job.Version to
	// the new version.
	Version int64
	// Steps are the steps the change writes: inserted with Create, else each a compare-and-set on
	// its Expect (ErrConflict, and nothing written, if one does not match).
	Steps []StepChange
	// Attempts are inserted or replaced (key: job, step, run, attempt).
	Attempts []Attempt
	// Inputs are new input versions of the job.
	Inputs []JobInput
	// Events are appended; their Seq must continue the job's LastSeq as read.
	Events []Event
	// Outbox holds the tasks the change requires; Apply sets their IDs.
	Outbox []OutboxTask
	// Webhooks are completion webhooks to deliver (never with Create: a new job is not terminal).
	Webhooks []WebhookDelivery
	// Urgent marks a change that something scarce waits for while it is written (a claim made
	// while its worker holds a slot of a capped service: the slot is idle until the call leaves).
	// It is written at once by a statement of its own, never queued behind other changes to share
	// their commit (Postgres's group commit). It writes exactly what it would otherwise.
	Urgent bool
	// IdempotencyKey, with Create, binds that stored key of the job's tenant (reserved by
	// InsertIdempotencyKey and not yet bound) to the new job; ErrConflict, and nothing written, if it
	// is missing or bound.
	IdempotencyKey string
}

// Reader holds the queries available both inside and outside a transaction.
type Reader interface {
	// GetJob returns the job, or ErrNotFound if it does not exist or is outside the scope.
	GetJob(ctx context.Context, scope Scope, id string) (*Job, error)
	// GetSteps returns the job's steps ordered by Position.
	GetSteps(ctx context.Context, jobID string) ([]Step, error)
	// GetAttempts returns the job's attempts ordered by step position, run, attempt.
	GetAttempts(ctx context.Context, jobID string) ([]Attempt, error)
	// GetJobInputs returns the job's input history ordered by version.
	GetJobInputs(ctx context.Context, jobID string) ([]JobInput, error)
	// ListJobs returns the jobs in the filter's scope, newest first.
	ListJobs(ctx context.Context, f JobFilter) ([]Job, error)
	// ListEvents returns up to limit events of the job with Seq > afterSeq, in Seq order.
	ListEvents(ctx context.Context, jobID string, afterSeq int64, limit int) ([]Event, error)
	// ListExpiredSteps returns RUNNING steps whose lease expired before now (oldest first).
	ListExpiredSteps(ctx context.Context, now time.Time, limit int) ([]Step, error)
	// ListWaitingSteps returns QUEUED and RETRYING steps last updated before the given time.
	ListWaitingSteps(ctx context.Context, updatedBefore time.Time, limit int) ([]Step, error)
	// ListIdleJobs returns PENDING and RUNNING jobs last updated before the given time whose StuckAt is nil.
	ListIdleJobs(ctx context.Context, updatedBefore time.Time, limit int) ([]Job, error)
	// ListStuckJobs returns PENDING and RUNNING jobs whose StuckAt is before the given time.
	ListStuckJobs(ctx context.Context, stuckBefore time.Time, limit int) ([]Job, error)
	// GetIdempotencyKey returns the tenant's record or ErrNotFound.
	GetIdempotencyKey(ctx context.Context, tenant, key string) (*IdempotencyRecord, error)
	// CountOutbox returns how many tasks wait in the outbox.
	CountOutbox(ctx context.Context) (int64, error)
	// LastSeqs returns the LastSeq of each of the jobs that exist among ids, by id.
	LastSeqs(ctx context.Context, ids []string) (map[string]int64, error)
	// DeleteOutbox removes outbox tasks that were dispatched; ids that do not exist are ignored.
	DeleteOutbox(ctx context.Context, ids []int64) error
	// ListWebhookDeliveries returns the job's webhook deliveries, oldest first.
	ListWebhookDeliveries(ctx context.Context, jobID string) ([]WebhookDelivery, error)
}

// Tx is a transaction. Every state change of a job happens inside one Tx that first calls LockJob.
type Tx interface {
	Reader
	// LockJob reads the job and locks it until the end of the transaction (SELECT ... FOR UPDATE on
	// Postgres; SQLite transactions are already exclusive). ErrNotFound if missing.
	LockJob(ctx context.Context, id string) (*Job, error)
	// InsertJob inserts a new job (ErrDuplicate if the id exists).
	InsertJob(ctx context.Context, j *Job) error
	// UpdateJob writes every mutable field of the job (status, input, output, error, last_seq, stuck,
	// timestamps). ErrNotFound if missing.
	UpdateJob(ctx context.Context, j *Job) error
	// InsertSteps inserts the steps of a new job.
	InsertSteps(ctx context.Context, steps []Step) error
	// UpdateStep writes every mutable field of s if the stored row still matches expect; ErrConflict otherwise.
	UpdateStep(ctx context.Context, s *Step, expect StepExpect) error
	// UpsertAttempt inserts or replaces the attempt (key: job, step, run, attempt).
	UpsertAttempt(ctx context.Context, a *Attempt) error
	// InsertJobInput records an input version.
	InsertJobInput(ctx context.Context, in *JobInput) error
	// AppendEvents inserts events (ErrDuplicate if a (job, seq) exists). Callers assign Seq from Job.LastSeq.
	AppendEvents(ctx context.Context, events []Event) error
	// InsertOutbox adds tasks to the outbox.
	InsertOutbox(ctx context.Context, tasks []OutboxTask) error
	// ClaimOutbox returns up to limit outbox tasks created before createdBefore, oldest first, locked
	// for this transaction and skipped by concurrent claimers (FOR UPDATE SKIP LOCKED on Postgres).
	ClaimOutbox(ctx context.Context, createdBefore time.Time, limit int) ([]OutboxTask, error)
	// InsertIdempotencyKey stores a new key; ErrDuplicate if the tenant already has the key.
	InsertIdempotencyKey(ctx context.Context, r *IdempotencyRecord) error
	// UpdateIdempotencyKey rewrites the record with the same tenant and key (job id, hash, times).
	UpdateIdempotencyKey(ctx context.Context, r *IdempotencyRecord) error
	// DeleteIdempotencyKey removes one key of the tenant.
	DeleteIdempotencyKey(ctx context.Context, tenant, key string) error
	// DeleteExpiredIdempotencyKeys removes keys whose ExpiresAt is before now and returns how many.
	DeleteExpiredIdempotencyKeys(ctx context.Context, now time.Time) (int64, error)
}

// Store is CAO's durable state.
type Store interface {
	Reader
	// LoadJob returns the job and its steps (ordered by Position) as they were at one moment, in one
	// round trip where the database allows it; ErrNotFound if the job does not exist.
	LoadJob(ctx context.Context, id string) (*Job, []Step, error)
	// Apply writes one change of one job atomically: everything or, on ErrConflict (the job moved past
	// Change.Version, or a step compare-and-set failed) or any other error, nothing.
	Apply(ctx context.Context, c *Change) error
	// ExtendLease moves the heartbeat lease of a RUNNING step to until, if the step is still in the
	// given run and attempt and leased by owner (a single-row compare-and-set that takes no job lock);
	// ErrConflict otherwise.
	ExtendLease(ctx context.Context, jobID, step string, run, attempt int, owner string, until time.Time) error
	// DeleteFinishedJobs deletes up to limit terminal jobs that finished before the given time, oldest
	// first, with every row that belongs to them (steps, attempts, events, inputs, webhook
	// deliveries, the Idempotency-Keys bound to them), in one short statement; a job whose webhook
	// delivery is still pending is kept. It returns how many jobs it deleted.
	DeleteFinishedJobs(ctx context.Context, finishedBefore time.Time, limit int) (int64, error)
	// ClaimWebhooks claims up to limit deliveries due at now (neither delivered nor given up), oldest
	// first: each gets one more attempt and is not due again before claimUntil, so a deliverer that
	// dies mid-attempt leaves it to another after claimUntil. Concurrent claimers never get the same
	// delivery.
	ClaimWebhooks(ctx context.Context, now, claimUntil time.Time, limit int) ([]WebhookDelivery, error)
	// FinishWebhook records the outcome of a claimed attempt (LastStatus, LastError, NextAttemptAt,
	// DeliveredAt, GaveUpAt) if the delivery is still at d.Attempts; ErrConflict if another claim
	// took it meanwhile.
	FinishWebhook(ctx context.Context, d *WebhookDelivery) error
	// Tx runs fn in one transaction, committing if fn returns nil and rolling back otherwise.
	// Implementations retry fn on serialization failures and busy errors a few times.
	Tx(ctx context.Context, fn func(tx Tx) error) error
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Dialect names the backend: "postgres" or "sqlite".
	Dialect() string
	// Close releases the connection pool.
	Close() error
}

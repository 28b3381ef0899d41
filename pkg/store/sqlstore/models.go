package sqlstore

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cao-run/cao/pkg/store"
)

// The GORM models below mirror the tables of the migrations in module github.com/cao-run/cao/db.
// GORM's automatic CreatedAt/UpdatedAt handling is off: the store writes the times it is given.

type jobRow struct {
	ID             string     `gorm:"column:id;primaryKey"`
	Tenant         string     `gorm:"column:tenant"`
	FeatureName    string     `gorm:"column:feature_name"`
	Status         string     `gorm:"column:status"`
	Input          jsonText   `gorm:"column:input"`
	InputVersion   int        `gorm:"column:input_version"`
	Output         jsonText   `gorm:"column:output"`
	Error          string     `gorm:"column:error"`
	LastSeq        int64      `gorm:"column:last_seq"`
	StuckAt        *time.Time `gorm:"column:stuck_at"`
	StuckReason    string     `gorm:"column:stuck_reason"`
	IdempotencyKey *string    `gorm:"column:idempotency_key"`
	WebhookURL     *string    `gorm:"column:webhook_url"`
	CreatedAt      time.Time  `gorm:"column:created_at;autoCreateTime:false"`
	UpdatedAt      time.Time  `gorm:"column:updated_at;autoUpdateTime:false"`
	StartedAt      *time.Time `gorm:"column:started_at"`
	FinishedAt     *time.Time `gorm:"column:finished_at"`
	Version        int64      `gorm:"column:version"`
}

// TableName names the table for GORM.
func (jobRow) TableName() string { return "jobs" }

type stepRow struct {
	JobID          string     `gorm:"column:job_id;primaryKey"`
	Name           string     `gorm:"column:name;primaryKey"`
	Position       int        `gorm:"column:position"`
	Service        string     `gorm:"column:service"`
	Queue          string     `gorm:"column:queue"`
	Needs          jsonText   `gorm:"column:needs"`
	Status         string     `gorm:"column:status"`
	Run            int        `gorm:"column:run"`
	Attempts       int        `gorm:"column:attempts"`
	Lost           int        `gorm:"column:lost"`
	LeaseOwner     string     `gorm:"column:lease_owner"`
	LeaseExpiresAt *time.Time `gorm:"column:lease_expires_at"`
	NextAttemptAt  *time.Time `gorm:"column:next_attempt_at"`
	Output         jsonText   `gorm:"column:output"`
	Error          string     `gorm:"column:error"`
	ErrorClass     string     `gorm:"column:error_class"`
	CreatedAt      time.Time  `gorm:"column:created_at;autoCreateTime:false"`
	UpdatedAt      time.Time  `gorm:"column:updated_at;autoUpdateTime:false"`
	StartedAt      *time.Time `gorm:"column:started_at"`
	FinishedAt     *time.Time `gorm:"column:finished_at"`
}

// TableName names the table for GORM.
func (stepRow) TableName() string { return "job_steps" }

type attemptRow struct {
	JobID      string     `gorm:"column:job_id;primaryKey"`
	Step       string     `gorm:"column:step;primaryKey"`
	Run        int        `gorm:"column:run;primaryKey;autoIncrement:false"`
	Attempt    int        `gorm:"column:attempt;primaryKey;autoIncrement:false"`
	WorkerID   string     `gorm:"column:worker_id"`
	Status     string     `gorm:"column:status"`
	ErrorClass string     `gorm:"column:error_class"`
	Error      string     `gorm:"column:error"`
	HTTPStatus int        `gorm:"column:http_status"`
	StartedAt  time.Time  `gorm:"column:started_at"`
	FinishedAt *time.Time `gorm:"column:finished_at"`
}

// TableName names the table for GORM.
func (attemptRow) TableName() string { return "step_attempts" }

type eventRow struct {
	JobID   string    `gorm:"column:job_id;primaryKey"`
	Seq     int64     `gorm:"column:seq;primaryKey;autoIncrement:false"`
	Type    string    `gorm:"column:type"`
	Step    string    `gorm:"column:step"`
	Status  string    `gorm:"column:status"`
	Attempt int       `gorm:"column:attempt"`
	Run     int       `gorm:"column:run"`
	Error   string    `gorm:"column:error"`
	Reason  string    `gorm:"column:reason"`
	At      time.Time `gorm:"column:at"`
}

// TableName names the table for GORM.
func (eventRow) TableName() string { return "job_events" }

type jobInputRow struct {
	JobID     string    `gorm:"column:job_id;primaryKey"`
	Version   int       `gorm:"column:version;primaryKey;autoIncrement:false"`
	Input     jsonText  `gorm:"column:input"`
	CreatedAt time.Time `gorm:"column:created_at;autoCreateTime:false"`
}

// TableName names the table for GORM.
func (jobInputRow) TableName() string { return "job_inputs" }

type outboxRow struct {
	ID        int64      `gorm:"column:id;primaryKey;autoIncrement"`
	TaskID    string     `gorm:"column:task_id"`
	Queue     string     `gorm:"column:queue"`
	TypeName  string     `gorm:"column:type_name"`
	Payload   []byte     `gorm:"column:payload"`
	ProcessAt *time.Time `gorm:"column:process_at"`
	CreatedAt time.Time  `gorm:"column:created_at;autoCreateTime:false"`
}

// TableName names the table for GORM.
func (outboxRow) TableName() string { return "outbox" }

type idempotencyRow struct {
	Tenant      string    `gorm:"column:tenant;primaryKey"`
	Key         string    `gorm:"column:key;primaryKey"`
	RequestHash string    `gorm:"column:request_hash"`
	JobID       *string   `gorm:"column:job_id"`
	CreatedAt   time.Time `gorm:"column:created_at;autoCreateTime:false"`
	ExpiresAt   time.Time `gorm:"column:expires_at"`
}

// TableName names the table for GORM.
func (idempotencyRow) TableName() string { return "idempotency_keys" }

// jsonText is a JSON column: jsonb on Postgres, TEXT on SQLite. Empty means SQL NULL. It is written
// as a string, which pgx sends as JSON text for jsonb and SQLite stores as TEXT.
type jsonText []byte

// Value implements driver.Valuer.
func (j jsonText) Value() (driver.Value, error) {
	if len(j) == 0 {
		return nil, nil
	}
	return string(j), nil
}

// Scan implements sql.Scanner.
func (j *jsonText) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*j = nil
	case []byte:
		*j = append(jsonText(nil), v...) // the driver may reuse its buffer
	case string:
		*j = jsonText(v)
	default:
		return fmt.Errorf("scan json column: unsupported type %T", src)
	}
	return nil
}

// nonNullJSON keeps a JSON value for a NOT NULL column: a missing value is stored as JSON null.
func nonNullJSON(raw json.RawMessage) jsonText {
	if len(raw) == 0 {
		return jsonText("null")
	}
	return jsonText(raw)
}

// rawJSON returns the column's JSON, nil for SQL NULL.
func rawJSON(j jsonText) json.RawMessage {
	if len(j) == 0 {
		return nil
	}
	return json.RawMessage(j)
}

// dbTime normalizes a time as stored: UTC, truncated to microseconds (Postgres' precision, and the
// unit of SQLite's integer times). Truncating here keeps both dialects identical: Postgres would
// round instead.
func dbTime(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}

// dbTimePtr is dbTime for optional times.
func dbTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := dbTime(*t)
	return &v
}

// readTimePtr returns a read time in UTC.
func readTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.UTC()
	return &v
}

// now is the default for a zero time the caller did not set.
func now() time.Time { return dbTime(time.Now()) }

// orNow returns t normalized, or now when t is zero.
func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return now()
	}
	return dbTime(t)
}

// canonicalID returns the canonical form of a job id (lowercase UUID), so that both dialects store and
// compare ids alike; ok is false when id is not a UUID.
func canonicalID(id string) (string, bool) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", false
	}
	return u.String(), true
}

// errInvalidJobID reports a job id that is not a UUID.
func errInvalidJobID(id string) error {
	return fmt.Errorf("job id %q is not a UUID", id)
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// normalizeJob canonicalizes j in place (id, times, defaults) before it is written.
func normalizeJob(j *store.Job, insert bool) error {
	id, ok := canonicalID(j.ID)
	if !ok {
		return errInvalidJobID(j.ID)
	}
	j.ID = id
	if insert {
		j.Tenant = tenantOrDefault(j.Tenant)
		j.CreatedAt = orNow(j.CreatedAt)
		if j.UpdatedAt.IsZero() {
			j.UpdatedAt = j.CreatedAt
		}
		if j.InputVersion == 0 {
			j.InputVersion = 1
		}
	}
	j.CreatedAt = dbTime(j.CreatedAt)
	j.UpdatedAt = orNow(j.UpdatedAt)
	j.StuckAt = dbTimePtr(j.StuckAt)
	j.StartedAt = dbTimePtr(j.StartedAt)
	j.FinishedAt = dbTimePtr(j.FinishedAt)
	return nil
}

func jobToRow(j *store.Job) jobRow {
	return jobRow{
		ID:             j.ID,
		Tenant:         j.Tenant,
		FeatureName:    j.FeatureName,
		Status:         string(j.Status),
		Input:          nonNullJSON(j.Input),
		InputVersion:   j.InputVersion,
		Output:         jsonText(j.Output),
		Error:          j.Error,
		LastSeq:        j.LastSeq,
		StuckAt:        j.StuckAt,
		StuckReason:    j.StuckReason,
		IdempotencyKey: optString(j.IdempotencyKey),
		WebhookURL:     optString(j.WebhookURL),
		CreatedAt:      j.CreatedAt,
		UpdatedAt:      j.UpdatedAt,
		StartedAt:      j.StartedAt,
		FinishedAt:     j.FinishedAt,
		Version:        j.Version,
	}
}

func (r *jobRow) toJob() store.Job {
	return store.Job{
		ID:             r.ID,
		Tenant:         r.Tenant,
		FeatureName:    r.FeatureName,
		Status:         store.JobStatus(r.Status),
		Input:          rawJSON(r.Input),
		InputVersion:   r.InputVersion,
		Output:         rawJSON(r.Output),
		Error:          r.Error,
		LastSeq:        r.LastSeq,
		StuckAt:        readTimePtr(r.StuckAt),
		StuckReason:    r.StuckReason,
		IdempotencyKey: derefString(r.IdempotencyKey),
		WebhookURL:     derefString(r.WebhookURL),
		CreatedAt:      r.CreatedAt.UTC(),
		UpdatedAt:      r.UpdatedAt.UTC(),
		StartedAt:      readTimePtr(r.StartedAt),
		FinishedAt:     readTimePtr(r.FinishedAt),
		Version:        r.Version,
	}
}

// normalizeStep canonicalizes s in place before it is written.
func normalizeStep(s *store.Step, insert bool) error {
	id, ok := canonicalID(s.JobID)
	if !ok {
		return errInvalidJobID(s.JobID)
	}
	s.JobID = id
	if insert {
		s.CreatedAt = orNow(s.CreatedAt)
		if s.UpdatedAt.IsZero() {
			s.UpdatedAt = s.CreatedAt
		}
		if s.Run == 0 {
			s.Run = 1
		}
		if s.Needs == nil {
			s.Needs = []string{}
		}
	}
	s.CreatedAt = dbTime(s.CreatedAt)
	s.UpdatedAt = orNow(s.UpdatedAt)
	s.LeaseExpiresAt = dbTimePtr(s.LeaseExpiresAt)
	s.NextAttemptAt = dbTimePtr(s.NextAttemptAt)
	s.StartedAt = dbTimePtr(s.StartedAt)
	s.FinishedAt = dbTimePtr(s.FinishedAt)
	return nil
}

func stepToRow(s *store.Step) (stepRow, error) {
	needs := s.Needs
	if needs == nil {
		needs = []string{}
	}
	b, err := json.Marshal(needs)
	if err != nil {
		return stepRow{}, fmt.Errorf("encode needs of step %q: %w", s.Name, err)
	}
	return stepRow{
		JobID:          s.JobID,
		Name:           s.Name,
		Position:       s.Position,
		Service:        s.Service,
		Queue:          s.Queue,
		Needs:          b,
		Status:         string(s.Status),
		Run:            s.Run,
		Attempts:       s.Attempts,
		Lost:           s.Lost,
		LeaseOwner:     s.LeaseOwner,
		LeaseExpiresAt: s.LeaseExpiresAt,
		NextAttemptAt:  s.NextAttemptAt,
		Output:         jsonText(s.Output),
		Error:          s.Error,
		ErrorClass:     s.ErrorClass,
		CreatedAt:      s.CreatedAt,
		UpdatedAt:      s.UpdatedAt,
		StartedAt:      s.StartedAt,
		FinishedAt:     s.FinishedAt,
	}, nil
}

func (r *stepRow) toStep() (store.Step, error) {
	needs := []string{}
	if len(r.Needs) > 0 {
		if err := json.Unmarshal(r.Needs, &needs); err != nil {
			return store.Step{}, fmt.Errorf("decode needs of step %q of job %s: %w", r.Name, r.JobID, err)
		}
		if needs == nil { // JSON null
			needs = []string{}
		}
	}
	return store.Step{
		JobID:          r.JobID,
		Name:           r.Name,
		Position:       r.Position,
		Service:        r.Service,
		Queue:          r.Queue,
		Needs:          needs,
		Status:         store.StepStatus(r.Status),
		Run:            r.Run,
		Attempts:       r.Attempts,
		Lost:           r.Lost,
		LeaseOwner:     r.LeaseOwner,
		LeaseExpiresAt: readTimePtr(r.LeaseExpiresAt),
		NextAttemptAt:  readTimePtr(r.NextAttemptAt),
		Output:         rawJSON(r.Output),
		Error:          r.Error,
		ErrorClass:     r.ErrorClass,
		CreatedAt:      r.CreatedAt.UTC(),
		UpdatedAt:      r.UpdatedAt.UTC(),
		StartedAt:      readTimePtr(r.StartedAt),
		FinishedAt:     readTimePtr(r.FinishedAt),
	}, nil
}

func stepsFromRows(rows []stepRow) ([]store.Step, error) {
	steps := make([]store.Step, 0, len(rows))
	for i := range rows {
		s, err := rows[i].toStep()
		if err != nil {
			return nil, err
		}
		steps = append(steps, s)
	}
	return steps, nil
}

func attemptToRow(a *store.Attempt) attemptRow {
	return attemptRow{
		JobID:      a.JobID,
		Step:       a.Step,
		Run:        a.Run,
		Attempt:    a.Attempt,
		WorkerID:   a.WorkerID,
		Status:     a.Status,
		ErrorClass: a.ErrorClass,
		Error:      a.Error,
		HTTPStatus: a.HTTPStatus,
		StartedAt:  a.StartedAt,
		FinishedAt: a.FinishedAt,
	}
}

func (r *attemptRow) toAttempt() store.Attempt {
	return store.Attempt{
		JobID:      r.JobID,
		Step:       r.Step,
		Run:        r.Run,
		Attempt:    r.Attempt,
		WorkerID:   r.WorkerID,
		Status:     r.Status,
		ErrorClass: r.ErrorClass,
		Error:      r.Error,
		HTTPStatus: r.HTTPStatus,
		StartedAt:  r.StartedAt.UTC(),
		FinishedAt: readTimePtr(r.FinishedAt),
	}
}

func eventToRow(e *store.Event) eventRow {
	return eventRow{
		JobID:   e.JobID,
		Seq:     e.Seq,
		Type:    e.Type,
		Step:    e.Step,
		Status:  e.Status,
		Attempt: e.Attempt,
		Run:     e.Run,
		Error:   e.Error,
		Reason:  e.Reason,
		At:      e.At,
	}
}

func (r *eventRow) toEvent() store.Event {
	return store.Event{
		JobID:   r.JobID,
		Seq:     r.Seq,
		Type:    r.Type,
		Step:    r.Step,
		Status:  r.Status,
		Attempt: r.Attempt,
		Run:     r.Run,
		Error:   r.Error,
		Reason:  r.Reason,
		At:      r.At.UTC(),
	}
}

func outboxToRow(t *store.OutboxTask) outboxRow {
	payload := t.Payload
	if payload == nil {
		payload = []byte{}
	}
	return outboxRow{
		ID:        t.ID,
		TaskID:    t.TaskID,
		Queue:     t.Queue,
		TypeName:  t.TypeName,
		Payload:   payload,
		ProcessAt: t.ProcessAt,
		CreatedAt: t.CreatedAt,
	}
}

func (r *outboxRow) toTask() store.OutboxTask {
	payload := r.Payload
	if payload == nil {
		payload = []byte{}
	}
	return store.OutboxTask{
		ID:        r.ID,
		TaskID:    r.TaskID,
		Queue:     r.Queue,
		TypeName:  r.TypeName,
		Payload:   payload,
		ProcessAt: readTimePtr(r.ProcessAt),
		CreatedAt: r.CreatedAt.UTC(),
	}
}

func (r *idempotencyRow) toRecord() store.IdempotencyRecord {
	return store.IdempotencyRecord{
		Tenant:      r.Tenant,
		Key:         r.Key,
		RequestHash: r.RequestHash,
		JobID:       derefString(r.JobID),
		CreatedAt:   r.CreatedAt.UTC(),
		ExpiresAt:   r.ExpiresAt.UTC(),
	}
}

// tenantOrDefault is the tenant a row is written with: rows written without one belong to
// store.DefaultTenant, as rows stored before tenants existed do.
func tenantOrDefault(t string) string {
	if t == "" {
		return store.DefaultTenant
	}
	return t
}

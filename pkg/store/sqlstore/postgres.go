package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cao-run/cao/pkg/store"
)

// postgresHot runs the hot path on Postgres in one statement each, without GORM: loading a job
// reads the job and its steps in one query, and a change is one statement of data-modifying CTEs
// whose rows travel as JSON arrays. A statement is atomic on its own, so a change needs no
// explicit transaction: the job's version is its compare-and-set, and the function cao_conflict
// (migration 000002) aborts the statement when a step's compare-and-set fails after the job's
// succeeded, which leaves nothing written.
type postgresHot struct {
	db    *sql.DB
	group *groupCommitter // update changes arriving together share a statement (groupcommit.go)
}

func newPostgresHot(db *sql.DB) postgresHot {
	p := postgresHot{db: db}
	p.group = &groupCommitter{p: p}
	return p
}

// conflictCode is the SQLSTATE cao_conflict raises.
const conflictCode = "CA409"

const pgLoadJob = `SELECT j.id, j.tenant, j.feature_name, j.status, j.input, j.input_version, j.output, j.error, j.last_seq,
	j.stuck_at, j.stuck_reason, j.idempotency_key, j.webhook_url, j.created_at, j.updated_at, j.started_at, j.finished_at, j.version,
	(SELECT json_agg(s ORDER BY s.position, s.name) FROM job_steps s WHERE s.job_id = j.id)
FROM jobs j WHERE j.id = $1`

// pgStep is a job_steps row in JSON: as json_agg reads it, and as a change writes it (with the
// state its compare-and-set expects).
type pgStep struct {
	JobID          string          `json:"job_id,omitempty"` // set in a group commit's rows
	Name           string          `json:"name"`
	Position       int             `json:"position"`
	Service        string          `json:"service"`
	Queue          string          `json:"queue"`
	Needs          []string        `json:"needs"`
	Status         string          `json:"status"`
	Run            int             `json:"run"`
	Attempts       int             `json:"attempts"`
	Lost           int             `json:"lost"`
	LeaseOwner     string          `json:"lease_owner"`
	LeaseExpiresAt *time.Time      `json:"lease_expires_at"`
	NextAttemptAt  *time.Time      `json:"next_attempt_at"`
	Output         json.RawMessage `json:"output"`
	Error          string          `json:"error"`
	ErrorClass     string          `json:"error_class"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	StartedAt      *time.Time      `json:"started_at"`
	FinishedAt     *time.Time      `json:"finished_at"`
	ExpStatus      string          `json:"exp_status"`
	ExpRun         int             `json:"exp_run"`
	ExpAttempts    int             `json:"exp_attempts"`
}

func (p postgresHot) loadJob(ctx context.Context, id string) (*store.Job, []store.Step, error) {
	key, ok := canonicalID(id)
	if !ok {
		return nil, nil, fmt.Errorf("load job %q: %w", id, store.ErrNotFound)
	}
	var (
		r     jobRow
		steps jsonText
	)
	err := p.db.QueryRowContext(ctx, pgLoadJob, key).Scan(&r.ID, &r.Tenant, &r.FeatureName, &r.Status, &r.Input, &r.InputVersion,
		&r.Output, &r.Error, &r.LastSeq, &r.StuckAt, &r.StuckReason, &r.IdempotencyKey, &r.WebhookURL, &r.CreatedAt, &r.UpdatedAt,
		&r.StartedAt, &r.FinishedAt, &r.Version, &steps)
	if err != nil {
		return nil, nil, fmt.Errorf("load job %s: %w", key, interpretError(err))
	}
	var rows []pgStep
	if len(steps) > 0 {
		if err := json.Unmarshal(steps, &rows); err != nil {
			return nil, nil, fmt.Errorf("load job %s: decode steps: %w", key, err)
		}
	}
	job := r.toJob()
	out := make([]store.Step, len(rows))
	for i, s := range rows {
		if s.Needs == nil {
			s.Needs = []string{}
		}
		var output json.RawMessage
		if len(s.Output) > 0 && string(s.Output) != "null" {
			output = s.Output
		}
		out[i] = store.Step{
			JobID: key, Name: s.Name, Position: s.Position, Service: s.Service, Queue: s.Queue, Needs: s.Needs,
			Status: store.StepStatus(s.Status), Run: s.Run, Attempts: s.Attempts, Lost: s.Lost,
			LeaseOwner: s.LeaseOwner, LeaseExpiresAt: readTimePtr(s.LeaseExpiresAt), NextAttemptAt: readTimePtr(s.NextAttemptAt),
			Output: output, Error: s.Error, ErrorClass: s.ErrorClass,
			CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.UpdatedAt.UTC(),
			StartedAt: readTimePtr(s.StartedAt), FinishedAt: readTimePtr(s.FinishedAt),
		}
	}
	return &job, out, nil
}

// applyTail is the tail the change statements share: the attempts, inputs, events and outbox rows
// of $3..$6, each written only when its job's row was. For one change (group false) the job is $1
// and its row was written when jb has a row; for a group, every row names its job (job_id) and the
// rows written are jb's ids.
func applyTail(group bool) string {
	job, cols, written := "$1", "", "EXISTS (SELECT 1 FROM jb)"
	if group {
		job, cols, written = "{a}.job_id", "job_id uuid, ", "{a}.job_id IN (SELECT id FROM jb)"
	}
	r := func(alias, sql string) string {
		sql = strings.NewReplacer("{job}", job, "{cols}", cols, "{written}", written).Replace(sql)
		return strings.ReplaceAll(sql, "{a}", alias)
	}
	return `,
at AS (
	INSERT INTO step_attempts (job_id, step, run, attempt, worker_id, status, error_class, error, http_status, started_at, finished_at)
	` + r("a", `SELECT {job}, a.step, a.run, a.attempt, a.worker_id, a.status, a.error_class, a.error, a.http_status, a.started_at, a.finished_at
	FROM json_to_recordset($3::json) AS a({cols}step text, run int, attempt int, worker_id text, status text, error_class text,
		error text, http_status int, started_at timestamptz, finished_at timestamptz)
	WHERE {written}`) + `
	ON CONFLICT (job_id, step, run, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id, status = EXCLUDED.status,
		error_class = EXCLUDED.error_class, error = EXCLUDED.error, http_status = EXCLUDED.http_status,
		started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at
	RETURNING 1),
inp AS (
	INSERT INTO job_inputs (job_id, version, input, created_at)
	` + r("i", `SELECT {job}, i.version, i.input::jsonb, i.created_at
	FROM json_to_recordset($4::json) AS i({cols}version int, input text, created_at timestamptz)
	WHERE {written}`) + `
	RETURNING 1),
ev AS (
	INSERT INTO job_events (job_id, seq, type, step, status, attempt, run, error, reason, at)
	` + r("e", `SELECT {job}, e.seq, e.type, e.step, e.status, e.attempt, e.run, e.error, e.reason, e.at
	FROM json_to_recordset($5::json) AS e({cols}seq bigint, type text, step text, status text, attempt int, run int,
		error text, reason text, at timestamptz)
	WHERE {written}`) + `
	RETURNING 1),
ob AS (
	INSERT INTO outbox (task_id, queue, type_name, payload, process_at, created_at)
	SELECT o.task_id, o.queue, o.type_name, decode(o.payload, 'base64'), o.process_at, o.created_at
	` + r("o", `FROM json_to_recordset($6::json) AS o({cols}task_id text, queue text, type_name text, payload text,
		process_at timestamptz, created_at timestamptz, n bigint)
	WHERE {written}`) + `
	ORDER BY o.n
	RETURNING id)
`
}

// stepUpdate is how the statements update a step from its JSON row v (the columns a change may
// change), and stepColumns the types of those columns and of the state the row expects.
const (
	stepUpdate = `UPDATE job_steps s SET status = v.status, run = v.run, attempts = v.attempts, lost = v.lost, lease_owner = v.lease_owner,
		lease_expires_at = v.lease_expires_at, next_attempt_at = v.next_attempt_at, output = v.output,
		error = v.error, error_class = v.error_class, updated_at = v.updated_at, started_at = v.started_at,
		finished_at = v.finished_at`
	stepColumns = `name text, status text, run int, attempts int, lost int, lease_owner text,
		lease_expires_at timestamptz, next_attempt_at timestamptz, output jsonb, error text, error_class text,
		updated_at timestamptz, started_at timestamptz, finished_at timestamptz,
		exp_status text, exp_run int, exp_attempts int`
)

// pgApplyTail is the one-change statements' tail.
var pgApplyTail = applyTail(false)

// pgApplyUpdate: $1 job id, $2 expected version, $3..$6 tail, $7 steps, $8 how many steps, $9.. job fields.
var pgApplyUpdate = `WITH jb AS (
	UPDATE jobs SET status = $9, input = $10::jsonb, input_version = $11, output = $12::jsonb, error = $13, last_seq = $14,
		stuck_at = $15, stuck_reason = $16, updated_at = $17, started_at = $18, finished_at = $19, version = version + 1
	WHERE id = $1 AND version = $2
	RETURNING version),
st AS (
	` + stepUpdate + `
	FROM json_to_recordset($7::json) AS v(` + stepColumns + `)
	WHERE s.job_id = $1 AND s.name = v.name AND s.status = v.exp_status AND s.run = v.exp_run
		AND s.attempts = v.exp_attempts AND EXISTS (SELECT 1 FROM jb)
	RETURNING 1)` + pgApplyTail + `
SELECT (SELECT version FROM jb),
	CASE WHEN NOT EXISTS (SELECT 1 FROM jb) OR (SELECT count(*) FROM st) = $8 THEN true ELSE cao_conflict('step') END,
	(SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ob)`

// pgApplyCreate: $1 job id, $2 idempotency key or NULL, $3..$6 tail, $7 steps, $8..$20 job fields,
// $21 tenant, $22 webhook_url.
var pgApplyCreate = `WITH jb AS (
	INSERT INTO jobs (id, feature_name, status, input, input_version, output, error, last_seq, stuck_at, stuck_reason,
		idempotency_key, created_at, updated_at, started_at, finished_at, version, tenant, webhook_url)
	VALUES ($1, $8, $9, $10::jsonb, $11, $12::jsonb, $13, $14, $15, $16, $2, $17, $18, $19, $20, 1, $21, $22)
	RETURNING version),
ik AS (
	UPDATE idempotency_keys SET job_id = $1 WHERE tenant = $21 AND "key" = $2 AND job_id IS NULL
	RETURNING 1),
st AS (
	INSERT INTO job_steps (job_id, name, position, service, queue, needs, status, run, attempts, lost, lease_owner,
		lease_expires_at, next_attempt_at, output, error, error_class, created_at, updated_at, started_at, finished_at)
	SELECT $1, v.name, v.position, v.service, v.queue, v.needs, v.status, v.run, v.attempts, v.lost, v.lease_owner,
		v.lease_expires_at, v.next_attempt_at, v.output, v.error, v.error_class, v.created_at, v.updated_at,
		v.started_at, v.finished_at
	FROM json_to_recordset($7::json) AS v(name text, position int, service text, queue text, needs jsonb, status text,
		run int, attempts int, lost int, lease_owner text, lease_expires_at timestamptz, next_attempt_at timestamptz,
		output jsonb, error text, error_class text, created_at timestamptz, updated_at timestamptz,
		started_at timestamptz, finished_at timestamptz)
	RETURNING 1)` + pgApplyTail + `
SELECT (SELECT version FROM jb),
	CASE WHEN $2::text IS NULL OR EXISTS (SELECT 1 FROM ik) THEN true ELSE cao_conflict('idempotency key') END,
	(SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ob)`

// JSON shapes of the rows a change sends.
type (
	pgAttemptIn struct {
		JobID      string     `json:"job_id,omitempty"` // set in a group commit's rows
		Step       string     `json:"step"`
		Run        int        `json:"run"`
		Attempt    int        `json:"attempt"`
		WorkerID   string     `json:"worker_id"`
		Status     string     `json:"status"`
		ErrorClass string     `json:"error_class"`
		Error      string     `json:"error"`
		HTTPStatus int        `json:"http_status"`
		StartedAt  time.Time  `json:"started_at"`
		FinishedAt *time.Time `json:"finished_at"`
	}
	pgInputIn struct {
		JobID     string    `json:"job_id,omitempty"` // set in a group commit's rows
		Version   int       `json:"version"`
		Input     string    `json:"input"`
		CreatedAt time.Time `json:"created_at"`
	}
	pgEventIn struct {
		JobID   string    `json:"job_id,omitempty"` // set in a group commit's rows
		Seq     int64     `json:"seq"`
		Type    string    `json:"type"`
		Step    string    `json:"step"`
		Status  string    `json:"status"`
		Attempt int       `json:"attempt"`
		Run     int       `json:"run"`
		Error   string    `json:"error"`
		Reason  string    `json:"reason"`
		At      time.Time `json:"at"`
	}
	pgOutboxIn struct {
		JobID     string     `json:"job_id,omitempty"` // set in a group commit's rows
		TaskID    string     `json:"task_id"`
		Queue     string     `json:"queue"`
		TypeName  string     `json:"type_name"`
		Payload   string     `json:"payload"` // base64
		ProcessAt *time.Time `json:"process_at"`
		CreatedAt time.Time  `json:"created_at"`
		N         int        `json:"n"` // position: ids are assigned in this order
	}
)

func optJSON(raw json.RawMessage) *string {
	if len(raw) == 0 {
		return nil
	}
	s := string(raw)
	return &s
}

// changeRows is a change's rows in the JSON shapes the statements read, each tagged with the
// job's id when jobID is set (a group commit's rows, which belong to several jobs); the outbox
// rows are numbered from n0 in the order their ids must be assigned.
type changeRows struct {
	steps    []pgStep
	attempts []pgAttemptIn
	inputs   []pgInputIn
	events   []pgEventIn
	outbox   []pgOutboxIn
}

func rowsOf(c *store.Change, jobID string, n0 int) changeRows {
	var r changeRows
	r.steps = make([]pgStep, len(c.Steps))
	for i := range c.Steps {
		s, e := &c.Steps[i].Step, c.Steps[i].Expect
		needs := s.Needs
		if needs == nil {
			needs = []string{}
		}
		r.steps[i] = pgStep{
			JobID: jobID, Name: s.Name, Position: s.Position, Service: s.Service, Queue: s.Queue, Needs: needs,
			Status: string(s.Status), Run: s.Run, Attempts: s.Attempts, Lost: s.Lost, LeaseOwner: s.LeaseOwner,
			LeaseExpiresAt: s.LeaseExpiresAt, NextAttemptAt: s.NextAttemptAt, Output: s.Output,
			Error: s.Error, ErrorClass: s.ErrorClass, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt,
			StartedAt: s.StartedAt, FinishedAt: s.FinishedAt,
			ExpStatus: string(e.Status), ExpRun: e.Run, ExpAttempts: e.Attempts,
		}
	}
	r.attempts = make([]pgAttemptIn, len(c.Attempts))
	for i, a := range c.Attempts {
		r.attempts[i] = pgAttemptIn{JobID: jobID, Step: a.Step, Run: a.Run, Attempt: a.Attempt, WorkerID: a.WorkerID, Status: a.Status,
			ErrorClass: a.ErrorClass, Error: a.Error, HTTPStatus: a.HTTPStatus, StartedAt: a.StartedAt, FinishedAt: a.FinishedAt}
	}
	r.inputs = make([]pgInputIn, len(c.Inputs))
	for i, in := range c.Inputs {
		r.inputs[i] = pgInputIn{JobID: jobID, Version: in.Version, Input: string(nonNullJSON(in.Input)), CreatedAt: in.CreatedAt}
	}
	r.events = make([]pgEventIn, len(c.Events))
	for i, e := range c.Events {
		r.events[i] = pgEventIn{JobID: jobID, Seq: e.Seq, Type: e.Type, Step: e.Step, Status: e.Status, Attempt: e.Attempt, Run: e.Run,
			Error: e.Error, Reason: e.Reason, At: e.At}
	}
	r.outbox = make([]pgOutboxIn, len(c.Outbox))
	for i, t := range c.Outbox {
		r.outbox[i] = pgOutboxIn{JobID: jobID, TaskID: t.TaskID, Queue: t.Queue, TypeName: t.TypeName,
			Payload: base64.StdEncoding.EncodeToString(t.Payload), ProcessAt: t.ProcessAt, CreatedAt: t.CreatedAt, N: n0 + i}
	}
	return r
}

// statement returns the SQL and arguments that apply c.
func (p postgresHot) statement(c *store.Change) (string, []any, error) {
	j := c.Job
	cr := rowsOf(c, "", 0)
	attempts, inputs, events, outbox, steps := cr.attempts, cr.inputs, cr.events, cr.outbox, cr.steps
	rows, err := jsonArgs(attempts, inputs, events, outbox, steps)
	if err != nil {
		return "", nil, err
	}
	args := make([]any, 0, 20)
	args = append(args, j.ID, nil)
	args = append(args, rows...)
	row := jobToRow(j)
	var query string
	if c.Create {
		query = pgApplyCreate
		if c.IdempotencyKey != "" {
			args[1] = c.IdempotencyKey
		}
		args = append(args, j.FeatureName)
	} else {
		query = pgApplyUpdate
		if len(c.Webhooks) > 0 {
			query = pgApplyUpdateWebhooks
		}
		args[1] = c.Version
		args = append(args, len(c.Steps))
	}
	args = append(args, row.Status, string(row.Input), row.InputVersion, optJSON(json.RawMessage(row.Output)), row.Error,
		row.LastSeq, row.StuckAt, row.StuckReason)
	if c.Create {
		args = append(args, row.CreatedAt)
	}
	args = append(args, row.UpdatedAt, row.StartedAt, row.FinishedAt)
	if c.Create {
		args = append(args, row.Tenant, row.WebhookURL)
	} else if len(c.Webhooks) > 0 {
		hooks := make([]pgWebhookIn, len(c.Webhooks))
		for i, d := range c.Webhooks {
			hooks[i] = pgWebhookIn{ID: d.ID, URL: d.URL, Type: d.Type, Payload: string(d.Payload),
				NextAttemptAt: d.NextAttemptAt, CreatedAt: d.CreatedAt}
		}
		w, err := jsonArgs(hooks)
		if err != nil {
			return "", nil, err
		}
		args = append(args, w[0])
	}
	return query, args, nil
}

func (p postgresHot) apply(ctx context.Context, c *store.Change) error {
	if groupable(c) {
		return p.group.apply(ctx, c)
	}
	return p.applyOne(ctx, c)
}

// applyOne writes one change with its own statement.
func (p postgresHot) applyOne(ctx context.Context, c *store.Change) error {
	j := c.Job
	query, args, err := p.statement(c)
	if err != nil {
		return fmt.Errorf("apply change of job %s: %w", j.ID, err)
	}
	var (
		version sql.NullInt64
		ok      bool
		ids     string
	)
	err = p.db.QueryRowContext(ctx, query, args...).Scan(&version, &ok, &ids)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == conflictCode {
			return fmt.Errorf("apply change of job %s: %s: %w", j.ID, pgErr.Message, store.ErrConflict)
		}
		return fmt.Errorf("apply change of job %s: %w", j.ID, interpretError(err))
	}
	if !version.Valid {
		return fmt.Errorf("apply change of job %s at version %d: %w", j.ID, c.Version, store.ErrConflict)
	}
	outIDs, err := parseIDs(ids)
	if err != nil {
		return fmt.Errorf("apply change of job %s: %w", j.ID, err)
	}
	if len(outIDs) > 0 {
		if len(outIDs) != len(c.Outbox) {
			return fmt.Errorf("apply change of job %s: %d outbox ids for %d tasks", j.ID, len(outIDs), len(c.Outbox))
		}
		for i, id := range outIDs {
			c.Outbox[i].ID = id
		}
	}
	return nil
}

// jsonArgs encodes row lists as the JSON texts of json parameters. They are json, not jsonb: the
// statements read them once with json_to_recordset, and building a jsonb value first (its keys
// sorted, every object) cost Postgres about a sixth of its CPU on the hot path (session 6).
func jsonArgs(lists ...any) ([]any, error) {
	out := make([]any, len(lists))
	for i, l := range lists {
		b, err := json.Marshal(l)
		if err != nil {
			return nil, fmt.Errorf("encode rows: %w", err)
		}
		out[i] = string(b)
	}
	return out, nil
}

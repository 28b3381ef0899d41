package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cao-run/cao/pkg/store"
)

// postgresHot runs the hot path on Postgres in one statement each, without GORM: loading a job
// reads the job and its steps in one query, and a change is one statement of data-modifying CTEs
// whose rows travel as one array per column (pgcolumns.go). A statement is atomic on its own, so a
// change needs no explicit transaction: the job's version is its compare-and-set, and the function
// cao_conflict (migration 000002) aborts the statement when a step's compare-and-set fails after
// the job's succeeded, which leaves nothing written.
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

// pgStep is a job_steps row: as loadJob reads it (JSON, from json_agg), and as a change writes it
// (pgStepUpdateRows, pgStepCreateRows: with the state its compare-and-set expects).
type pgStep struct {
	JobID          string          `json:"job_id"`
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
	err := p.db.QueryRowContext(ctx, pgLoadJob, pgUUID(key)).Scan(&r.ID, &r.Tenant, &r.FeatureName, &r.Status, &r.Input, &r.InputVersion,
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

// Rows of a change, as the statements read them (pgcolumns.go). Every row names its job: a group
// commit's rows belong to several jobs.
type (
	pgAttemptIn struct {
		JobID      string
		Step       string
		Run        int
		Attempt    int
		WorkerID   string
		Status     string
		ErrorClass string
		Error      string
		HTTPStatus int
		StartedAt  time.Time
		FinishedAt *time.Time
	}
	pgInputIn struct {
		JobID     string
		Version   int
		Input     string // JSON
		CreatedAt time.Time
	}
	pgEventIn struct {
		JobID   string
		Seq     int64
		Type    string
		Step    string
		Status  string
		Attempt int
		Run     int
		Error   string
		Reason  string
		At      time.Time
	}
	pgOutboxIn struct {
		JobID     string
		TaskID    string
		Queue     string
		TypeName  string
		Payload   []byte
		ProcessAt *time.Time
		CreatedAt time.Time
		N         int64 // position: ids are assigned in this order
	}
)

// The columns of the row sets. A step's row has two shapes: the columns a change may update (with
// the state its compare-and-set expects), and the whole row of a new job's step.
var (
	pgStepUpdateRows = slices.Concat(pgStepKey, pgStepState, pgStepTimes, pgRowSet[pgStep]{
		pgCol("exp_status", "text", func(s *pgStep) string { return s.ExpStatus }),
		pgCol("exp_run", "int", func(s *pgStep) int { return s.ExpRun }),
		pgCol("exp_attempts", "int", func(s *pgStep) int { return s.ExpAttempts }),
	})
	pgStepCreateRows = slices.Concat(pgStepKey, pgRowSet[pgStep]{
		pgCol("position", "int", func(s *pgStep) int { return s.Position }),
		pgCol("service", "text", func(s *pgStep) string { return s.Service }),
		pgCol("queue", "text", func(s *pgStep) string { return s.Queue }),
		pgCol("needs", "jsonb", func(s *pgStep) string { return needsJSON(s.Needs) }),
		pgCol("created_at", "timestamptz", func(s *pgStep) time.Time { return s.CreatedAt }),
	}, pgStepState, pgStepTimes)
	// The columns both shapes of a step's row share.
	pgStepKey = pgRowSet[pgStep]{
		pgCol("job_id", "uuid", func(s *pgStep) string { return s.JobID }),
		pgCol("name", "text", func(s *pgStep) string { return s.Name }),
	}
	pgStepState = pgRowSet[pgStep]{
		pgCol("status", "text", func(s *pgStep) string { return s.Status }),
		pgCol("run", "int", func(s *pgStep) int { return s.Run }),
		pgCol("attempts", "int", func(s *pgStep) int { return s.Attempts }),
		pgCol("lost", "int", func(s *pgStep) int { return s.Lost }),
		pgCol("lease_owner", "text", func(s *pgStep) string { return s.LeaseOwner }),
		pgCol("lease_expires_at", "timestamptz", func(s *pgStep) *time.Time { return s.LeaseExpiresAt }),
		pgCol("next_attempt_at", "timestamptz", func(s *pgStep) *time.Time { return s.NextAttemptAt }),
		pgCol("output", "jsonb", func(s *pgStep) *string { return stepOutput(s.Output) }),
		pgCol("error", "text", func(s *pgStep) string { return s.Error }),
		pgCol("error_class", "text", func(s *pgStep) string { return s.ErrorClass }),
	}
	pgStepTimes = pgRowSet[pgStep]{
		pgCol("updated_at", "timestamptz", func(s *pgStep) time.Time { return s.UpdatedAt }),
		pgCol("started_at", "timestamptz", func(s *pgStep) *time.Time { return s.StartedAt }),
		pgCol("finished_at", "timestamptz", func(s *pgStep) *time.Time { return s.FinishedAt }),
	}
	pgAttemptRows = pgRowSet[pgAttemptIn]{
		pgCol("job_id", "uuid", func(a *pgAttemptIn) string { return a.JobID }),
		pgCol("step", "text", func(a *pgAttemptIn) string { return a.Step }),
		pgCol("run", "int", func(a *pgAttemptIn) int { return a.Run }),
		pgCol("attempt", "int", func(a *pgAttemptIn) int { return a.Attempt }),
		pgCol("worker_id", "text", func(a *pgAttemptIn) string { return a.WorkerID }),
		pgCol("status", "text", func(a *pgAttemptIn) string { return a.Status }),
		pgCol("error_class", "text", func(a *pgAttemptIn) string { return a.ErrorClass }),
		pgCol("error", "text", func(a *pgAttemptIn) string { return a.Error }),
		pgCol("http_status", "int", func(a *pgAttemptIn) int { return a.HTTPStatus }),
		pgCol("started_at", "timestamptz", func(a *pgAttemptIn) time.Time { return a.StartedAt }),
		pgCol("finished_at", "timestamptz", func(a *pgAttemptIn) *time.Time { return a.FinishedAt }),
	}
	pgInputRows = pgRowSet[pgInputIn]{
		pgCol("job_id", "uuid", func(i *pgInputIn) string { return i.JobID }),
		pgCol("version", "int", func(i *pgInputIn) int { return i.Version }),
		pgCol("input", "jsonb", func(i *pgInputIn) string { return i.Input }),
		pgCol("created_at", "timestamptz", func(i *pgInputIn) time.Time { return i.CreatedAt }),
	}
	pgEventRows = pgRowSet[pgEventIn]{
		pgCol("job_id", "uuid", func(e *pgEventIn) string { return e.JobID }),
		pgCol("seq", "bigint", func(e *pgEventIn) int64 { return e.Seq }),
		pgCol("type", "text", func(e *pgEventIn) string { return e.Type }),
		pgCol("step", "text", func(e *pgEventIn) string { return e.Step }),
		pgCol("status", "text", func(e *pgEventIn) string { return e.Status }),
		pgCol("attempt", "int", func(e *pgEventIn) int { return e.Attempt }),
		pgCol("run", "int", func(e *pgEventIn) int { return e.Run }),
		pgCol("error", "text", func(e *pgEventIn) string { return e.Error }),
		pgCol("reason", "text", func(e *pgEventIn) string { return e.Reason }),
		pgCol("at", "timestamptz", func(e *pgEventIn) time.Time { return e.At }),
	}
	pgOutboxRows = pgRowSet[pgOutboxIn]{
		pgCol("job_id", "uuid", func(o *pgOutboxIn) string { return o.JobID }),
		pgCol("task_id", "text", func(o *pgOutboxIn) string { return o.TaskID }),
		pgCol("queue", "text", func(o *pgOutboxIn) string { return o.Queue }),
		pgCol("type_name", "text", func(o *pgOutboxIn) string { return o.TypeName }),
		pgCol("payload", "bytea", func(o *pgOutboxIn) []byte { return o.Payload }),
		pgCol("process_at", "timestamptz", func(o *pgOutboxIn) *time.Time { return o.ProcessAt }),
		pgCol("created_at", "timestamptz", func(o *pgOutboxIn) time.Time { return o.CreatedAt }),
		pgCol("n", "bigint", func(o *pgOutboxIn) int64 { return o.N }),
	}
)

// applyTail is the tail the change statements share: the attempts, inputs, events and outbox rows,
// their parameters numbered from p's next one on (in this order), each row written only when its
// job's row was. For one change (group false) its row was written when jb has a row; for a group,
// the rows written are jb's ids.
func applyTail(p *pgParams, group bool) string {
	written := func(alias string) string {
		if group {
			return alias + ".job_id IN (SELECT id FROM jb)"
		}
		return "EXISTS (SELECT 1 FROM jb)"
	}
	return `,
at AS (
	INSERT INTO step_attempts (job_id, step, run, attempt, worker_id, status, error_class, error, http_status, started_at, finished_at)
	SELECT a.job_id, a.step, a.run, a.attempt, a.worker_id, a.status, a.error_class, a.error, a.http_status, a.started_at, a.finished_at
	FROM ` + pgAttemptRows.from("a", p) + `
	WHERE ` + written("a") + `
	ON CONFLICT (job_id, step, run, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id, status = EXCLUDED.status,
		error_class = EXCLUDED.error_class, error = EXCLUDED.error, http_status = EXCLUDED.http_status,
		started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at
	RETURNING 1),
inp AS (
	INSERT INTO job_inputs (job_id, version, input, created_at)
	SELECT i.job_id, i.version, i.input, i.created_at
	FROM ` + pgInputRows.from("i", p) + `
	WHERE ` + written("i") + `
	RETURNING 1),
ev AS (
	INSERT INTO job_events (job_id, seq, type, step, status, attempt, run, error, reason, at)
	SELECT e.job_id, e.seq, e.type, e.step, e.status, e.attempt, e.run, e.error, e.reason, e.at
	FROM ` + pgEventRows.from("e", p) + `
	WHERE ` + written("e") + `
	RETURNING 1),
ob AS (
	INSERT INTO outbox (task_id, queue, type_name, payload, process_at, created_at)
	SELECT o.task_id, o.queue, o.type_name, o.payload, o.process_at, o.created_at
	FROM ` + pgOutboxRows.from("o", p) + `
	WHERE ` + written("o") + `
	ORDER BY o.n
	RETURNING id)
`
}

// tailArgs appends the parameters of applyTail's row sets to args, in its order.
func (r *changeRows) tailArgs(args []any) []any {
	args = pgAttemptRows.args(args, r.attempts)
	args = pgInputRows.args(args, r.inputs)
	args = pgEventRows.args(args, r.events)
	return pgOutboxRows.args(args, r.outbox)
}

// stepUpdate is how the statements update a step from its row v (pgStepUpdateRows), and stepMatch
// the compare-and-set that selects the step.
const (
	stepUpdate = `UPDATE job_steps s SET status = v.status, run = v.run, attempts = v.attempts, lost = v.lost, lease_owner = v.lease_owner,
		lease_expires_at = v.lease_expires_at, next_attempt_at = v.next_attempt_at, output = v.output,
		error = v.error, error_class = v.error_class, updated_at = v.updated_at, started_at = v.started_at,
		finished_at = v.finished_at`
	stepMatch = `s.job_id = v.job_id AND s.name = v.name AND s.status = v.exp_status AND s.run = v.exp_run
		AND s.attempts = v.exp_attempts`
	// stepInsert inserts the steps of new jobs from their rows v (pgStepCreateRows).
	stepInsert = `INSERT INTO job_steps (job_id, name, position, service, queue, needs, status, run, attempts, lost, lease_owner,
		lease_expires_at, next_attempt_at, output, error, error_class, created_at, updated_at, started_at, finished_at)
	SELECT v.job_id, v.name, v.position, v.service, v.queue, v.needs, v.status, v.run, v.attempts, v.lost, v.lease_owner,
		v.lease_expires_at, v.next_attempt_at, v.output, v.error, v.error_class, v.created_at, v.updated_at,
		v.started_at, v.finished_at`
)

// The one-change statements. Their scalar parameters come first (pgUpdateScalars, pgCreateScalars),
// then the row sets: the steps, then applyTail's.
const (
	// $1 job id, $2 expected version, $3 how many steps, $4..$14 job fields.
	pgUpdateScalars = 14
	// $1 job id, $2 idempotency key or NULL, $3 feature, $4..$15 job fields, $16 tenant, $17 webhook_url.
	pgCreateScalars = 17
)

// pgApplyUpdate updates one job, and pgApplyUpdateWebhooks also inserts the change's webhook
// deliveries (after the tail's parameters), used only by the changes that end a job with a
// webhook_url, so the common statement stays as it is.
var pgApplyUpdate, pgApplyUpdateWebhooks = pgUpdateStatement(false), pgUpdateStatement(true)

func pgUpdateStatement(webhooks bool) string {
	p := &pgParams{n: pgUpdateScalars}
	sql := `WITH jb AS (
	UPDATE jobs SET status = $4, input = $5, input_version = $6, output = $7, error = $8, last_seq = $9,
		stuck_at = $10, stuck_reason = $11, updated_at = $12, started_at = $13, finished_at = $14, version = version + 1
	WHERE id = $1 AND version = $2
	RETURNING version),
st AS (
	` + stepUpdate + `
	FROM ` + pgStepUpdateRows.from("v", p) + `
	WHERE ` + stepMatch + ` AND EXISTS (SELECT 1 FROM jb)
	RETURNING 1)` + applyTail(p, false)
	if webhooks {
		sql += `,
wh AS (
	INSERT INTO webhook_deliveries (id, job_id, url, type, payload, next_attempt_at, created_at)
	SELECT w.id, $1, w.url, w.type, w.payload, w.next_attempt_at, w.created_at
	FROM ` + pgWebhookRows.from("w", p) + `
	WHERE EXISTS (SELECT 1 FROM jb)
	RETURNING 1)`
	}
	return sql + `
SELECT (SELECT version FROM jb),
	CASE WHEN NOT EXISTS (SELECT 1 FROM jb) OR (SELECT count(*) FROM st) = $3 THEN true ELSE cao_conflict('step') END,
	(SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ob)`
}

// pgApplyCreate inserts one job, and binds its idempotency key.
var pgApplyCreate = func() string {
	p := &pgParams{n: pgCreateScalars}
	return `WITH jb AS (
	INSERT INTO jobs (id, feature_name, status, input, input_version, output, error, last_seq, stuck_at, stuck_reason,
		idempotency_key, created_at, updated_at, started_at, finished_at, version, tenant, webhook_url)
	VALUES ($1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $2, $12, $13, $14, $15, 1, $16, $17)
	RETURNING version),
ik AS (
	UPDATE idempotency_keys SET job_id = $1 WHERE tenant = $16 AND "key" = $2 AND job_id IS NULL
	RETURNING 1),
st AS (
	` + stepInsert + `
	FROM ` + pgStepCreateRows.from("v", p) + `
	RETURNING 1)` + applyTail(p, false) + `
SELECT (SELECT version FROM jb),
	CASE WHEN $2::text IS NULL OR EXISTS (SELECT 1 FROM ik) THEN true ELSE cao_conflict('idempotency key') END,
	(SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ob)`
}()

// optJSON is raw as a jsonb parameter: NULL when empty.
func optJSON(raw json.RawMessage) *string {
	if len(raw) == 0 {
		return nil
	}
	s := string(raw)
	return &s
}

// stepOutput is a step's output as a jsonb parameter: NULL when empty or JSON null (as the JSON
// rows stored it before).
func stepOutput(raw json.RawMessage) *string {
	if string(raw) == "null" {
		return nil
	}
	return optJSON(raw)
}

// needsJSON is a step's needs as a JSON array.
func needsJSON(needs []string) string {
	if len(needs) == 0 {
		return "[]"
	}
	b, err := json.Marshal(needs)
	if err != nil { // a []string always encodes
		panic(err)
	}
	return string(b)
}

// changeRows is a change's rows as the statements read them; the outbox rows are numbered from n0
// in the order their ids must be assigned.
type changeRows struct {
	steps    []pgStep
	attempts []pgAttemptIn
	inputs   []pgInputIn
	events   []pgEventIn
	outbox   []pgOutboxIn
}

// sizedRows returns empty row slices with room for every row of changes: a group's rows are
// appended without the slices growing (and being copied) on the way.
func sizedRows(changes []*store.Change) changeRows {
	var steps, attempts, inputs, events, outbox int
	for _, c := range changes {
		steps += len(c.Steps)
		attempts += len(c.Attempts)
		inputs += len(c.Inputs)
		events += len(c.Events)
		outbox += len(c.Outbox)
	}
	return changeRows{
		steps: make([]pgStep, 0, steps), attempts: make([]pgAttemptIn, 0, attempts),
		inputs: make([]pgInputIn, 0, inputs), events: make([]pgEventIn, 0, events), outbox: make([]pgOutboxIn, 0, outbox),
	}
}

// add appends c's rows to r, its outbox rows numbered from n0.
func (r *changeRows) add(c *store.Change, n0 int) {
	jobID := c.Job.ID
	for i := range c.Steps {
		s, e := &c.Steps[i].Step, c.Steps[i].Expect
		r.steps = append(r.steps, pgStep{
			JobID: jobID, Name: s.Name, Position: s.Position, Service: s.Service, Queue: s.Queue, Needs: s.Needs,
			Status: string(s.Status), Run: s.Run, Attempts: s.Attempts, Lost: s.Lost, LeaseOwner: s.LeaseOwner,
			LeaseExpiresAt: s.LeaseExpiresAt, NextAttemptAt: s.NextAttemptAt, Output: s.Output,
			Error: s.Error, ErrorClass: s.ErrorClass, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt,
			StartedAt: s.StartedAt, FinishedAt: s.FinishedAt,
			ExpStatus: string(e.Status), ExpRun: e.Run, ExpAttempts: e.Attempts,
		})
	}
	for _, a := range c.Attempts {
		r.attempts = append(r.attempts, pgAttemptIn{JobID: jobID, Step: a.Step, Run: a.Run, Attempt: a.Attempt,
			WorkerID: a.WorkerID, Status: a.Status, ErrorClass: a.ErrorClass, Error: a.Error, HTTPStatus: a.HTTPStatus,
			StartedAt: a.StartedAt, FinishedAt: a.FinishedAt})
	}
	for _, in := range c.Inputs {
		r.inputs = append(r.inputs, pgInputIn{JobID: jobID, Version: in.Version, Input: string(nonNullJSON(in.Input)),
			CreatedAt: in.CreatedAt})
	}
	for _, e := range c.Events {
		r.events = append(r.events, pgEventIn{JobID: jobID, Seq: e.Seq, Type: e.Type, Step: e.Step, Status: e.Status,
			Attempt: e.Attempt, Run: e.Run, Error: e.Error, Reason: e.Reason, At: e.At})
	}
	for i, t := range c.Outbox {
		payload := t.Payload
		if payload == nil {
			payload = []byte{} // NOT NULL: an empty payload is stored empty
		}
		r.outbox = append(r.outbox, pgOutboxIn{JobID: jobID, TaskID: t.TaskID, Queue: t.Queue, TypeName: t.TypeName,
			Payload: payload, ProcessAt: t.ProcessAt, CreatedAt: t.CreatedAt, N: int64(n0 + i)})
	}
}

// statement returns the SQL and arguments that apply c.
func (p postgresHot) statement(c *store.Change) (string, []any) {
	j := c.Job
	cr := sizedRows([]*store.Change{c})
	cr.add(c, 0)
	row := jobToRow(j)
	args := make([]any, 0, 96)
	var query string
	if c.Create {
		query = pgApplyCreate
		var key *string
		if c.IdempotencyKey != "" {
			key = &c.IdempotencyKey
		}
		args = append(args, pgUUID(j.ID), key, row.FeatureName)
	} else {
		query = pgApplyUpdate
		if len(c.Webhooks) > 0 {
			query = pgApplyUpdateWebhooks
		}
		args = append(args, pgUUID(j.ID), c.Version, len(c.Steps))
	}
	args = append(args, row.Status, string(row.Input), row.InputVersion, optJSON(json.RawMessage(row.Output)), row.Error,
		row.LastSeq, row.StuckAt, row.StuckReason)
	if c.Create {
		args = append(args, row.CreatedAt)
	}
	args = append(args, row.UpdatedAt, row.StartedAt, row.FinishedAt)
	if c.Create {
		args = append(args, row.Tenant, row.WebhookURL)
		args = pgStepCreateRows.args(args, cr.steps)
	} else {
		args = pgStepUpdateRows.args(args, cr.steps)
	}
	args = cr.tailArgs(args)
	if !c.Create && len(c.Webhooks) > 0 {
		hooks := make([]pgWebhookIn, len(c.Webhooks))
		for i, d := range c.Webhooks {
			hooks[i] = pgWebhookIn{ID: d.ID, URL: d.URL, Type: d.Type, Payload: string(d.Payload),
				NextAttemptAt: d.NextAttemptAt, CreatedAt: d.CreatedAt}
		}
		args = pgWebhookRows.args(args, hooks)
	}
	return query, args
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
	query, args := p.statement(c)
	var (
		version sql.NullInt64
		ok      bool
		ids     string
	)
	err := p.db.QueryRowContext(ctx, query, args...).Scan(&version, &ok, &ids)
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

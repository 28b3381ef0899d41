package sqlstore

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/cao-run/cao/pkg/store"
)

const (
	// defaultListLimit is ListJobs' page size when JobFilter.Limit is not set.
	defaultListLimit = 100
	// maxListLimit caps ListJobs' page size.
	maxListLimit = 1000
)

// queries implements store.Reader on a connection pool or on a transaction.
type queries struct {
	db      *gorm.DB
	dialect string
}

func (q *queries) conn(ctx context.Context) *gorm.DB { return q.db.WithContext(ctx) }

// withLimit applies limit when it is positive; zero or negative means no limit.
func withLimit(db *gorm.DB, limit int) *gorm.DB {
	if limit > 0 {
		return db.Limit(limit)
	}
	return db
}

// GetJob returns the job, or store.ErrNotFound if it does not exist or is outside scope.
func (q *queries) GetJob(ctx context.Context, scope store.Scope, id string) (*store.Job, error) {
	key, ok := canonicalID(id)
	if !ok {
		return nil, fmt.Errorf("get job %q: %w", id, store.ErrNotFound)
	}
	var row jobRow
	if err := scoped(q.conn(ctx), scope).Where("id = ?", key).Take(&row).Error; err != nil {
		return nil, fmt.Errorf("get job %s: %w", key, interpretError(err))
	}
	j := row.toJob()
	return &j, nil
}

// GetSteps returns the job's steps ordered by Position (none if the job does not exist).
func (q *queries) GetSteps(ctx context.Context, jobID string) ([]store.Step, error) {
	key, ok := canonicalID(jobID)
	if !ok {
		return []store.Step{}, nil
	}
	var rows []stepRow
	if err := q.conn(ctx).Where("job_id = ?", key).Order("position, name").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("get steps of job %s: %w", key, interpretError(err))
	}
	return stepsFromRows(rows)
}

// GetAttempts returns the job's attempts ordered by step position, run, attempt.
func (q *queries) GetAttempts(ctx context.Context, jobID string) ([]store.Attempt, error) {
	key, ok := canonicalID(jobID)
	if !ok {
		return []store.Attempt{}, nil
	}
	var rows []attemptRow
	err := q.conn(ctx).
		Table("step_attempts AS a").
		Select("a.*").
		Joins("JOIN job_steps AS s ON s.job_id = a.job_id AND s.name = a.step").
		Where("a.job_id = ?", key).
		Order("s.position, a.step, a.run, a.attempt").
		Find(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("get attempts of job %s: %w", key, interpretError(err))
	}
	out := make([]store.Attempt, len(rows))
	for i := range rows {
		out[i] = rows[i].toAttempt()
	}
	return out, nil
}

// GetJobInputs returns the job's input history ordered by version.
func (q *queries) GetJobInputs(ctx context.Context, jobID string) ([]store.JobInput, error) {
	key, ok := canonicalID(jobID)
	if !ok {
		return []store.JobInput{}, nil
	}
	var rows []jobInputRow
	if err := q.conn(ctx).Where("job_id = ?", key).Order("version").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("get inputs of job %s: %w", key, interpretError(err))
	}
	out := make([]store.JobInput, len(rows))
	for i, r := range rows {
		out[i] = store.JobInput{JobID: r.JobID, Version: r.Version, Input: rawJSON(r.Input), CreatedAt: r.CreatedAt.UTC()}
	}
	return out, nil
}

// ListJobs returns jobs newest first by (CreatedAt, ID), strictly after f.After when set. A Limit
// of 0 means 100; larger than 1000 means 1000.
func (q *queries) ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	db := scoped(q.conn(ctx).Model(&jobRow{}), f.Scope)
	if f.Status != "" {
		db = db.Where("status = ?", string(f.Status))
	}
	if f.Feature != "" {
		db = db.Where("feature_name = ?", f.Feature)
	}
	if f.After != nil {
		id, ok := canonicalID(f.After.ID)
		if !ok {
			return nil, fmt.Errorf("list jobs: cursor: %w", errInvalidJobID(f.After.ID))
		}
		at := dbTime(f.After.CreatedAt)
		// Row-value comparison: both dialects support it and Postgres serves it from the index.
		db = db.Where("(created_at, id) < (?, ?)", at, id)
	}
	var rows []jobRow
	if err := db.Order("created_at DESC, id DESC").Limit(limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list jobs: %w", interpretError(err))
	}
	return jobsFromRows(rows), nil
}

// scoped limits a query of the jobs table to the scope's tenant; the zero Scope matches no row.
func scoped(db *gorm.DB, scope store.Scope) *gorm.DB {
	if scope.All {
		return db
	}
	if scope.Tenant == "" {
		return db.Where("1 = 0")
	}
	return db.Where("tenant = ?", scope.Tenant)
}

func jobsFromRows(rows []jobRow) []store.Job {
	out := make([]store.Job, len(rows))
	for i := range rows {
		out[i] = rows[i].toJob()
	}
	return out
}

// ListEvents returns up to limit events of the job with Seq > afterSeq, in Seq order; limit <= 0
// means all of them.
func (q *queries) ListEvents(ctx context.Context, jobID string, afterSeq int64, limit int) ([]store.Event, error) {
	key, ok := canonicalID(jobID)
	if !ok {
		return []store.Event{}, nil
	}
	var rows []eventRow
	db := q.conn(ctx).Where("job_id = ? AND seq > ?", key, afterSeq).Order("seq")
	if err := withLimit(db, limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list events of job %s: %w", key, interpretError(err))
	}
	out := make([]store.Event, len(rows))
	for i := range rows {
		out[i] = rows[i].toEvent()
	}
	return out, nil
}

// ListExpiredSteps returns RUNNING steps whose lease expired before now, oldest lease first;
// limit <= 0 means all of them.
func (q *queries) ListExpiredSteps(ctx context.Context, now time.Time, limit int) ([]store.Step, error) {
	var rows []stepRow
	db := q.conn(ctx).
		// The status is a literal so the partial index job_steps_running_lease_idx serves it.
		Where("status = 'RUNNING' AND lease_expires_at < ?", dbTime(now)).
		Order("lease_expires_at, job_id, name")
	if err := withLimit(db, limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list expired steps: %w", interpretError(err))
	}
	return stepsFromRows(rows)
}

// ListWaitingSteps returns QUEUED and RETRYING steps last updated before updatedBefore, least
// recently updated first; limit <= 0 means all of them.
func (q *queries) ListWaitingSteps(ctx context.Context, updatedBefore time.Time, limit int) ([]store.Step, error) {
	var rows []stepRow
	db := q.conn(ctx).
		// Literal statuses, so the partial index job_steps_waiting_updated_idx serves it.
		Where("status IN ('QUEUED', 'RETRYING') AND updated_at < ?", dbTime(updatedBefore)).
		Order("updated_at, job_id, name")
	if err := withLimit(db, limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list waiting steps: %w", interpretError(err))
	}
	return stepsFromRows(rows)
}

// ListIdleJobs returns PENDING and RUNNING jobs last updated before updatedBefore whose StuckAt is
// nil, least recently updated first; limit <= 0 means all of them.
func (q *queries) ListIdleJobs(ctx context.Context, updatedBefore time.Time, limit int) ([]store.Job, error) {
	var rows []jobRow
	db := q.conn(ctx).
		Where("status IN ? AND updated_at < ? AND stuck_at IS NULL",
			[]string{string(store.JobPending), string(store.JobRunning)}, dbTime(updatedBefore)).
		Order("updated_at, id")
	if err := withLimit(db, limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list idle jobs: %w", interpretError(err))
	}
	return jobsFromRows(rows), nil
}

// ListStuckJobs returns PENDING and RUNNING jobs whose StuckAt is before stuckBefore, longest stuck
// first; limit <= 0 means all of them.
func (q *queries) ListStuckJobs(ctx context.Context, stuckBefore time.Time, limit int) ([]store.Job, error) {
	var rows []jobRow
	db := q.conn(ctx).
		Where("status IN ? AND stuck_at < ?",
			[]string{string(store.JobPending), string(store.JobRunning)}, dbTime(stuckBefore)).
		Order("stuck_at, id")
	if err := withLimit(db, limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list stuck jobs: %w", interpretError(err))
	}
	return jobsFromRows(rows), nil
}

// GetIdempotencyKey returns the tenant's record or store.ErrNotFound.
func (q *queries) GetIdempotencyKey(ctx context.Context, tenant, key string) (*store.IdempotencyRecord, error) {
	var row idempotencyRow
	if err := q.conn(ctx).Where(`tenant = ? AND "key" = ?`, tenantOrDefault(tenant), key).Take(&row).Error; err != nil {
		return nil, fmt.Errorf("get idempotency key: %w", interpretError(err))
	}
	r := row.toRecord()
	return &r, nil
}

// LastSeqs returns the LastSeq of each of the jobs that exist among ids, by id as given.
func (q *queries) LastSeqs(ctx context.Context, ids []string) (map[string]int64, error) {
	keys := make([]string, 0, len(ids))
	given := make(map[string]string, len(ids)) // canonical -> as given
	for _, id := range ids {
		if key, ok := canonicalID(id); ok {
			keys = append(keys, key)
			given[key] = id
		}
	}
	out := make(map[string]int64, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	var rows []struct {
		ID      string
		LastSeq int64
	}
	if err := q.conn(ctx).Model(&jobRow{}).Select("id, last_seq").Where("id IN ?", keys).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("last seqs: %w", interpretError(err))
	}
	for _, r := range rows {
		out[given[r.ID]] = r.LastSeq
	}
	return out, nil
}

// DeleteOutbox removes dispatched tasks; ids that do not exist are ignored.
func (q *queries) DeleteOutbox(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := q.conn(ctx).Where("id IN ?", ids).Delete(&outboxRow{}).Error; err != nil {
		return fmt.Errorf("delete outbox: %w", interpretError(err))
	}
	return nil
}

// CountOutbox returns how many tasks wait in the outbox.
func (q *queries) CountOutbox(ctx context.Context) (int64, error) {
	var n int64
	if err := q.conn(ctx).Model(&outboxRow{}).Count(&n).Error; err != nil {
		return 0, fmt.Errorf("count outbox: %w", interpretError(err))
	}
	return n, nil
}

// txn implements store.Tx on one database transaction.
type txn struct {
	queries
}

var _ store.Tx = (*txn)(nil)

// LockJob reads the job and locks its row until the end of the transaction (SELECT ... FOR UPDATE on
// Postgres; a SQLite write transaction already excludes every other writer).
func (t *txn) LockJob(ctx context.Context, id string) (*store.Job, error) {
	key, ok := canonicalID(id)
	if !ok {
		return nil, fmt.Errorf("lock job %q: %w", id, store.ErrNotFound)
	}
	db := t.conn(ctx)
	if t.dialect == DialectPostgres {
		db = db.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
	}
	var row jobRow
	if err := db.Where("id = ?", key).Take(&row).Error; err != nil {
		return nil, fmt.Errorf("lock job %s: %w", key, interpretError(err))
	}
	j := row.toJob()
	return &j, nil
}

// InsertJob inserts a new job (store.ErrDuplicate if the id exists). It normalizes j in place: the
// id to lowercase UUID form, times to UTC microseconds, a zero CreatedAt to now, a zero UpdatedAt to
// CreatedAt and a zero InputVersion to 1.
func (t *txn) InsertJob(ctx context.Context, j *store.Job) error {
	if err := normalizeJob(j, true); err != nil {
		return fmt.Errorf("insert job: %w", err)
	}
	row := jobToRow(j)
	if err := t.conn(ctx).Create(&row).Error; err != nil {
		return fmt.Errorf("insert job %s: %w", j.ID, interpretError(err))
	}
	return nil
}

// UpdateJob writes every mutable field of the job (all but FeatureName, IdempotencyKey and
// CreatedAt); store.ErrNotFound if missing. A zero UpdatedAt is set to now; times are normalized in
// place.
func (t *txn) UpdateJob(ctx context.Context, j *store.Job) error {
	if err := normalizeJob(j, false); err != nil {
		return fmt.Errorf("update job: %w: %w", err, store.ErrNotFound)
	}
	row := jobToRow(j)
	res := t.conn(ctx).Model(&jobRow{}).Where("id = ?", j.ID).Updates(map[string]any{
		"status":        row.Status,
		"input":         row.Input,
		"input_version": row.InputVersion,
		"output":        row.Output,
		"error":         row.Error,
		"last_seq":      row.LastSeq,
		"stuck_at":      row.StuckAt,
		"stuck_reason":  row.StuckReason,
		"updated_at":    row.UpdatedAt,
		"started_at":    row.StartedAt,
		"finished_at":   row.FinishedAt,
	})
	if res.Error != nil {
		return fmt.Errorf("update job %s: %w", j.ID, interpretError(res.Error))
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("update job %s: %w", j.ID, store.ErrNotFound)
	}
	return nil
}

// InsertSteps inserts the steps of a new job (store.ErrDuplicate if a step exists). It normalizes the
// steps in place: times to UTC microseconds, a zero CreatedAt to now, a zero UpdatedAt to CreatedAt,
// a zero Run to 1 and nil Needs to empty.
func (t *txn) InsertSteps(ctx context.Context, steps []store.Step) error {
	if len(steps) == 0 {
		return nil
	}
	rows := make([]stepRow, len(steps))
	for i := range steps {
		if err := normalizeStep(&steps[i], true); err != nil {
			return fmt.Errorf("insert steps: %w", err)
		}
		row, err := stepToRow(&steps[i])
		if err != nil {
			return fmt.Errorf("insert steps: %w", err)
		}
		rows[i] = row
	}
	ids := make([]string, len(rows))
	for i := range rows {
		ids[i] = rows[i].JobID
	}
	if err := t.needJobs(ctx, "insert steps", ids...); err != nil {
		return err
	}
	if err := t.conn(ctx).Create(&rows).Error; err != nil {
		return fmt.Errorf("insert steps of job %s: %w", steps[0].JobID, interpretError(err))
	}
	return nil
}

// needJobs is, on Postgres, the check the foreign keys of job_steps, job_inputs and
// webhook_deliveries made before migration 000008: every job a row names must exist (store.ErrNotFound
// otherwise), and it is locked FOR KEY SHARE until the transaction ends, so it cannot be deleted
// before the rows are committed. The hot statements need no check: they write a job's rows only if
// they wrote its row. On SQLite the foreign keys are still there.
func (t *txn) needJobs(ctx context.Context, what string, ids ...string) error {
	if t.dialect != DialectPostgres || len(ids) == 0 {
		return nil
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var found []string
	if err := t.conn(ctx).Raw(`SELECT id FROM jobs WHERE id IN ? FOR KEY SHARE`, ids).Scan(&found).Error; err != nil {
		return fmt.Errorf("%s: %w", what, interpretError(err))
	}
	for _, id := range found {
		delete(want, id)
	}
	for id := range want {
		return fmt.Errorf("%s: job %s: %w", what, id, store.ErrNotFound)
	}
	return nil
}

// UpdateStep writes every mutable field of s if the stored row still has expect's status, run and
// attempts: store.ErrConflict if it does not, store.ErrNotFound if the step does not exist. The
// step's definition (Position, Service, Queue, Needs) and CreatedAt are not written. A zero
// UpdatedAt is set to now; times are normalized in place.
func (t *txn) UpdateStep(ctx context.Context, s *store.Step, expect store.StepExpect) error {
	if err := normalizeStep(s, false); err != nil {
		return fmt.Errorf("update step: %w: %w", err, store.ErrNotFound)
	}
	row, err := stepToRow(s)
	if err != nil {
		return fmt.Errorf("update step: %w", err)
	}
	res := t.conn(ctx).Model(&stepRow{}).
		Where("job_id = ? AND name = ? AND status = ? AND run = ? AND attempts = ?",
			s.JobID, s.Name, string(expect.Status), expect.Run, expect.Attempts).
		Updates(map[string]any{
			"status":           row.Status,
			"run":              row.Run,
			"attempts":         row.Attempts,
			"lost":             row.Lost,
			"lease_owner":      row.LeaseOwner,
			"lease_expires_at": row.LeaseExpiresAt,
			"next_attempt_at":  row.NextAttemptAt,
			"output":           row.Output,
			"error":            row.Error,
			"error_class":      row.ErrorClass,
			"updated_at":       row.UpdatedAt,
			"started_at":       row.StartedAt,
			"finished_at":      row.FinishedAt,
		})
	if res.Error != nil {
		return fmt.Errorf("update step %s/%s: %w", s.JobID, s.Name, interpretError(res.Error))
	}
	if res.RowsAffected == 1 {
		return nil
	}
	var n int64
	if err := t.conn(ctx).Model(&stepRow{}).Where("job_id = ? AND name = ?", s.JobID, s.Name).Count(&n).Error; err != nil {
		return fmt.Errorf("update step %s/%s: %w", s.JobID, s.Name, interpretError(err))
	}
	if n == 0 {
		return fmt.Errorf("update step %s/%s: %w", s.JobID, s.Name, store.ErrNotFound)
	}
	return fmt.Errorf("update step %s/%s expecting %s run %d attempts %d: %w",
		s.JobID, s.Name, expect.Status, expect.Run, expect.Attempts, store.ErrConflict)
}

// UpsertAttempt inserts or replaces the attempt (key: job, step, run, attempt). Its step must
// exist. Times are normalized in place.
func (t *txn) UpsertAttempt(ctx context.Context, a *store.Attempt) error {
	key, ok := canonicalID(a.JobID)
	if !ok {
		return fmt.Errorf("upsert attempt: %w", errInvalidJobID(a.JobID))
	}
	a.JobID = key
	a.StartedAt = orNow(a.StartedAt)
	a.FinishedAt = dbTimePtr(a.FinishedAt)
	row := attemptToRow(a)
	err := t.conn(ctx).Clauses(clause.OnConflict{
		Columns: []clause.Column{{Name: "job_id"}, {Name: "step"}, {Name: "run"}, {Name: "attempt"}},
		DoUpdates: clause.AssignmentColumns([]string{
			"worker_id", "status", "error_class", "error", "http_status", "started_at", "finished_at",
		}),
	}).Create(&row).Error
	if err != nil {
		return fmt.Errorf("upsert attempt %s/%s run %d attempt %d: %w", a.JobID, a.Step, a.Run, a.Attempt, interpretError(err))
	}
	return nil
}

// InsertJobInput records an input version (store.ErrDuplicate if the version exists). A zero
// CreatedAt is set to now; times are normalized in place.
func (t *txn) InsertJobInput(ctx context.Context, in *store.JobInput) error {
	key, ok := canonicalID(in.JobID)
	if !ok {
		return fmt.Errorf("insert job input: %w", errInvalidJobID(in.JobID))
	}
	in.JobID = key
	in.CreatedAt = orNow(in.CreatedAt)
	row := jobInputRow{JobID: key, Version: in.Version, Input: nonNullJSON(in.Input), CreatedAt: in.CreatedAt}
	if err := t.needJobs(ctx, "insert job input", key); err != nil {
		return err
	}
	if err := t.conn(ctx).Create(&row).Error; err != nil {
		return fmt.Errorf("insert input %d of job %s: %w", in.Version, key, interpretError(err))
	}
	return nil
}

// AppendEvents inserts events (store.ErrDuplicate if a (job, seq) exists). A zero At is set to now;
// times are normalized in place.
func (t *txn) AppendEvents(ctx context.Context, events []store.Event) error {
	if len(events) == 0 {
		return nil
	}
	rows := make([]eventRow, len(events))
	for i := range events {
		e := &events[i]
		key, ok := canonicalID(e.JobID)
		if !ok {
			return fmt.Errorf("append events: %w", errInvalidJobID(e.JobID))
		}
		e.JobID = key
		e.At = orNow(e.At)
		rows[i] = eventToRow(e)
	}
	if err := t.conn(ctx).Create(&rows).Error; err != nil {
		return fmt.Errorf("append events of job %s: %w", events[0].JobID, interpretError(err))
	}
	return nil
}

// InsertOutbox adds tasks to the outbox and sets their IDs. A zero CreatedAt is set to now; times
// are normalized in place.
func (t *txn) InsertOutbox(ctx context.Context, tasks []store.OutboxTask) error {
	if len(tasks) == 0 {
		return nil
	}
	rows := make([]outboxRow, len(tasks))
	for i := range tasks {
		tasks[i].CreatedAt = orNow(tasks[i].CreatedAt)
		tasks[i].ProcessAt = dbTimePtr(tasks[i].ProcessAt)
		rows[i] = outboxToRow(&tasks[i])
		rows[i].ID = 0 // assigned by the database
	}
	if err := t.conn(ctx).Create(&rows).Error; err != nil {
		return fmt.Errorf("insert outbox: %w", interpretError(err))
	}
	for i := range rows {
		tasks[i].ID = rows[i].ID
	}
	return nil
}

// ClaimOutbox returns up to limit outbox tasks created before createdBefore, oldest first, locked
// until the end of the transaction and skipped by concurrent claimers (FOR UPDATE SKIP LOCKED on
// Postgres; a SQLite write transaction excludes every other claimer). limit <= 0 means all of them.
func (t *txn) ClaimOutbox(ctx context.Context, createdBefore time.Time, limit int) ([]store.OutboxTask, error) {
	db := t.conn(ctx).Where("created_at < ?", dbTime(createdBefore)).Order("id")
	if t.dialect == DialectPostgres {
		db = db.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate, Options: clause.LockingOptionsSkipLocked})
	}
	var rows []outboxRow
	if err := withLimit(db, limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("claim outbox: %w", interpretError(err))
	}
	out := make([]store.OutboxTask, len(rows))
	for i := range rows {
		out[i] = rows[i].toTask()
	}
	return out, nil
}

// InsertIdempotencyKey stores a new key; store.ErrDuplicate if the key exists. A zero CreatedAt is
// set to now; times are normalized in place.
func (t *txn) InsertIdempotencyKey(ctx context.Context, r *store.IdempotencyRecord) error {
	row, err := idempotencyToRow(r)
	if err != nil {
		return fmt.Errorf("insert idempotency key: %w", err)
	}
	if err := t.conn(ctx).Create(&row).Error; err != nil {
		return fmt.Errorf("insert idempotency key: %w", interpretError(err))
	}
	return nil
}

// UpdateIdempotencyKey rewrites the record with the same key (job id, hash, times);
// store.ErrNotFound if the key does not exist. Times are normalized in place.
func (t *txn) UpdateIdempotencyKey(ctx context.Context, r *store.IdempotencyRecord) error {
	row, err := idempotencyToRow(r)
	if err != nil {
		return fmt.Errorf("update idempotency key: %w", err)
	}
	res := t.conn(ctx).Model(&idempotencyRow{}).Where(`tenant = ? AND "key" = ?`, row.Tenant, row.Key).Updates(map[string]any{
		"request_hash": row.RequestHash,
		"job_id":       row.JobID,
		"created_at":   row.CreatedAt,
		"expires_at":   row.ExpiresAt,
	})
	if res.Error != nil {
		return fmt.Errorf("update idempotency key: %w", interpretError(res.Error))
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("update idempotency key: %w", store.ErrNotFound)
	}
	return nil
}

func idempotencyToRow(r *store.IdempotencyRecord) (idempotencyRow, error) {
	if r.JobID != "" {
		key, ok := canonicalID(r.JobID)
		if !ok {
			return idempotencyRow{}, errInvalidJobID(r.JobID)
		}
		r.JobID = key
	}
	r.CreatedAt = orNow(r.CreatedAt)
	r.ExpiresAt = dbTime(r.ExpiresAt)
	r.Tenant = tenantOrDefault(r.Tenant)
	return idempotencyRow{
		Tenant:      r.Tenant,
		Key:         r.Key,
		RequestHash: r.RequestHash,
		JobID:       optString(r.JobID),
		CreatedAt:   r.CreatedAt,
		ExpiresAt:   r.ExpiresAt,
	}, nil
}

// DeleteIdempotencyKey removes one key; a key that does not exist is not an error.
func (t *txn) DeleteIdempotencyKey(ctx context.Context, tenant, key string) error {
	if err := t.conn(ctx).Where(`tenant = ? AND "key" = ?`, tenantOrDefault(tenant), key).Delete(&idempotencyRow{}).Error; err != nil {
		return fmt.Errorf("delete idempotency key: %w", interpretError(err))
	}
	return nil
}

// DeleteExpiredIdempotencyKeys removes keys whose ExpiresAt is before now and returns how many.
func (t *txn) DeleteExpiredIdempotencyKeys(ctx context.Context, now time.Time) (int64, error) {
	res := t.conn(ctx).Where("expires_at < ?", dbTime(now)).Delete(&idempotencyRow{})
	if res.Error != nil {
		return 0, fmt.Errorf("delete expired idempotency keys: %w", interpretError(res.Error))
	}
	return res.RowsAffected, nil
}

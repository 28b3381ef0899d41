package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cao-run/cao/pkg/store"
)

type webhookRow struct {
	ID            string     `gorm:"column:id;primaryKey"`
	JobID         string     `gorm:"column:job_id"`
	URL           string     `gorm:"column:url"`
	Type          string     `gorm:"column:type"`
	Payload       string     `gorm:"column:payload"`
	Attempts      int        `gorm:"column:attempts"`
	LastStatus    int        `gorm:"column:last_status"`
	LastError     string     `gorm:"column:last_error"`
	NextAttemptAt time.Time  `gorm:"column:next_attempt_at"`
	DeliveredAt   *time.Time `gorm:"column:delivered_at"`
	GaveUpAt      *time.Time `gorm:"column:gave_up_at"`
	CreatedAt     time.Time  `gorm:"column:created_at;autoCreateTime:false"`
}

// TableName names the table for GORM.
func (webhookRow) TableName() string { return "webhook_deliveries" }

func (r *webhookRow) toDelivery() store.WebhookDelivery {
	return store.WebhookDelivery{
		ID: r.ID, JobID: r.JobID, URL: r.URL, Type: r.Type, Payload: []byte(r.Payload), Attempts: r.Attempts,
		LastStatus: r.LastStatus, LastError: r.LastError, NextAttemptAt: r.NextAttemptAt.UTC(),
		DeliveredAt: readTimePtr(r.DeliveredAt), GaveUpAt: readTimePtr(r.GaveUpAt), CreatedAt: r.CreatedAt.UTC(),
	}
}

// normalizeWebhook canonicalizes a delivery of job jobID in place before it is inserted.
func normalizeWebhook(d *store.WebhookDelivery, jobID string) error {
	if d.ID == "" {
		d.ID = uuid.NewString()
	}
	id, ok := canonicalID(d.ID)
	if !ok {
		return fmt.Errorf("webhook delivery id %q is not a UUID", d.ID)
	}
	d.ID, d.JobID = id, jobID
	d.CreatedAt = orNow(d.CreatedAt)
	if d.NextAttemptAt.IsZero() {
		d.NextAttemptAt = d.CreatedAt
	}
	d.NextAttemptAt = dbTime(d.NextAttemptAt)
	d.LastError = store.CleanText(d.LastError)
	return nil
}

func webhookToRow(d *store.WebhookDelivery) webhookRow {
	return webhookRow{
		ID: d.ID, JobID: d.JobID, URL: d.URL, Type: d.Type, Payload: string(d.Payload), Attempts: d.Attempts,
		LastStatus: d.LastStatus, LastError: d.LastError, NextAttemptAt: d.NextAttemptAt,
		DeliveredAt: dbTimePtr(d.DeliveredAt), GaveUpAt: dbTimePtr(d.GaveUpAt), CreatedAt: d.CreatedAt,
	}
}

// ListWebhookDeliveries returns the job's webhook deliveries, oldest first.
func (q *queries) ListWebhookDeliveries(ctx context.Context, jobID string) ([]store.WebhookDelivery, error) {
	key, ok := canonicalID(jobID)
	if !ok {
		return []store.WebhookDelivery{}, nil
	}
	var rows []webhookRow
	if err := q.conn(ctx).Where("job_id = ?", key).Order("created_at, id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list webhook deliveries of job %s: %w", key, interpretError(err))
	}
	out := make([]store.WebhookDelivery, len(rows))
	for i := range rows {
		out[i] = rows[i].toDelivery()
	}
	return out, nil
}

// insertWebhooks inserts deliveries inside a transaction (the generic hot path).
func (t *txn) insertWebhooks(ctx context.Context, ds []store.WebhookDelivery) error {
	if len(ds) == 0 {
		return nil
	}
	rows := make([]webhookRow, len(ds))
	for i := range ds {
		rows[i] = webhookToRow(&ds[i])
	}
	ids := make([]string, len(rows))
	for i := range rows {
		ids[i] = rows[i].JobID
	}
	if err := t.needJobs(ctx, "insert webhook deliveries", ids...); err != nil {
		return err
	}
	if err := t.conn(ctx).Create(&rows).Error; err != nil {
		return fmt.Errorf("insert webhook deliveries: %w", interpretError(err))
	}
	return nil
}

// ClaimWebhooks claims up to limit due deliveries, oldest first (see store.Store). Postgres skips rows
// another claimer has locked; SQLite's writes are serialized anyway.
func (s *Store) ClaimWebhooks(ctx context.Context, now, claimUntil time.Time, limit int) ([]store.WebhookDelivery, error) {
	if limit <= 0 {
		return nil, nil
	}
	lock := ""
	if s.dialect == DialectPostgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	query := `UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?
		WHERE id IN (SELECT id FROM webhook_deliveries
			WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= ?
			ORDER BY next_attempt_at LIMIT ?` + lock + `)
		RETURNING id, job_id, url, type, payload, attempts, last_status, last_error, next_attempt_at,
			delivered_at, gave_up_at, created_at`
	var rows []webhookRow
	err := s.Tx(ctx, func(tx store.Tx) error {
		rows = rows[:0]
		return tx.(*txn).conn(ctx).Raw(query, dbTime(claimUntil), dbTime(now), limit).Scan(&rows).Error
	})
	if err != nil {
		return nil, fmt.Errorf("claim webhook deliveries: %w", interpretError(err))
	}
	out := make([]store.WebhookDelivery, len(rows))
	for i := range rows {
		out[i] = rows[i].toDelivery()
	}
	return out, nil
}

// FinishWebhook records the outcome of a claimed attempt if no other claim took the delivery since.
func (s *Store) FinishWebhook(ctx context.Context, d *store.WebhookDelivery) error {
	id, ok := canonicalID(d.ID)
	if !ok {
		return fmt.Errorf("finish webhook delivery: %w", store.ErrNotFound)
	}
	res := s.conn(ctx).Exec(`UPDATE webhook_deliveries SET last_status = ?, last_error = ?, next_attempt_at = ?,
		delivered_at = ?, gave_up_at = ? WHERE id = ? AND attempts = ?`,
		d.LastStatus, store.CleanText(d.LastError), dbTime(d.NextAttemptAt), dbTimePtr(d.DeliveredAt),
		dbTimePtr(d.GaveUpAt), id, d.Attempts)
	if res.Error != nil {
		return fmt.Errorf("finish webhook delivery %s: %w", id, interpretError(res.Error))
	}
	if res.RowsAffected != 1 {
		return fmt.Errorf("finish webhook delivery %s at attempt %d: %w", id, d.Attempts, store.ErrConflict)
	}
	return nil
}

// pgWebhookIn is a delivery as a change sends it to Postgres, and pgWebhookRows its columns.
type pgWebhookIn struct {
	ID            string
	URL           string
	Type          string
	Payload       string
	NextAttemptAt time.Time
	CreatedAt     time.Time
}

var pgWebhookRows = pgRowSet[pgWebhookIn]{
	pgCol("id", "uuid", func(w *pgWebhookIn) string { return w.ID }),
	pgCol("url", "text", func(w *pgWebhookIn) string { return w.URL }),
	pgCol("type", "text", func(w *pgWebhookIn) string { return w.Type }),
	pgCol("payload", "text", func(w *pgWebhookIn) string { return w.Payload }),
	pgCol("next_attempt_at", "timestamptz", func(w *pgWebhookIn) time.Time { return w.NextAttemptAt }),
	pgCol("created_at", "timestamptz", func(w *pgWebhookIn) time.Time { return w.CreatedAt }),
}

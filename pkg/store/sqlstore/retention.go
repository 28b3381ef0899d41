package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/store"
)

// retentionDoomed selects the jobs a retention batch deletes: terminal, finished before ?, without a
// webhook delivery still pending, oldest first (jobs_finished_at_idx serves it).
const retentionDoomed = `SELECT id FROM jobs
	WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < ?
		AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
			WHERE w.job_id = jobs.id AND w.delivered_at IS NULL AND w.gave_up_at IS NULL)
	ORDER BY finished_at LIMIT ?`

// DeleteFinishedJobs deletes a batch of jobs past retention (see store.Store). On Postgres it is one
// statement whose rows are locked SKIP LOCKED, so a job being resumed right now is left for the next
// batch; steps, attempts, events, inputs and deliveries go with their job (ON DELETE CASCADE).
func (s *Store) DeleteFinishedJobs(ctx context.Context, finishedBefore time.Time, limit int) (int64, error) {
	if limit <= 0 {
		return 0, nil
	}
	before := dbTime(finishedBefore)
	if s.dialect == DialectPostgres {
		res := s.conn(ctx).Exec(`WITH doomed AS (`+retentionDoomed+` FOR UPDATE SKIP LOCKED),
			keys AS (DELETE FROM idempotency_keys WHERE job_id IN (SELECT id FROM doomed))
			DELETE FROM jobs WHERE id IN (SELECT id FROM doomed)`, before, limit)
		if res.Error != nil {
			return 0, fmt.Errorf("delete finished jobs: %w", interpretError(res.Error))
		}
		return res.RowsAffected, nil
	}
	var n int64
	err := s.Tx(ctx, func(tx store.Tx) error {
		db := tx.(*txn).conn(ctx)
		var ids []string
		if err := db.Raw(retentionDoomed, before, limit).Scan(&ids).Error; err != nil {
			return err
		}
		if len(ids) == 0 {
			n = 0
			return nil
		}
		if err := db.Exec(`DELETE FROM idempotency_keys WHERE job_id IN ?`, ids).Error; err != nil {
			return err
		}
		res := db.Exec(`DELETE FROM jobs WHERE id IN ?`, ids)
		n = res.RowsAffected
		return res.Error
	})
	if err != nil {
		return 0, fmt.Errorf("delete finished jobs: %w", interpretError(err))
	}
	return n, nil
}

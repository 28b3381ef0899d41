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

// DeleteFinishedJobs deletes a batch of jobs past retention (see store.Store), in one transaction:
// it selects and locks the jobs first (on Postgres SKIP LOCKED, so a job being resumed right now is
// left for the next batch), then deletes their rows. Each statement after the first sees every
// change committed to those jobs before they were locked, and none can come after. Every row of the
// jobs is deleted explicitly, children first: on Postgres no table has a foreign key to jobs
// (migrations 000007 and 000008); on SQLite the keys' cascades then find nothing left.
func (s *Store) DeleteFinishedJobs(ctx context.Context, finishedBefore time.Time, limit int) (int64, error) {
	if limit <= 0 {
		return 0, nil
	}
	doomed := retentionDoomed
	if s.dialect == DialectPostgres {
		doomed += " FOR UPDATE SKIP LOCKED"
	}
	var n int64
	err := s.Tx(ctx, func(tx store.Tx) error {
		db := tx.(*txn).conn(ctx)
		var ids []string
		if err := db.Raw(doomed, dbTime(finishedBefore), limit).Scan(&ids).Error; err != nil {
			return err
		}
		n = 0
		if len(ids) == 0 {
			return nil
		}
		for _, table := range []string{"idempotency_keys", "job_events", "step_attempts", "job_steps", "job_inputs", "webhook_deliveries"} {
			if err := db.Exec(`DELETE FROM `+table+` WHERE job_id IN ?`, ids).Error; err != nil {
				return err
			}
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

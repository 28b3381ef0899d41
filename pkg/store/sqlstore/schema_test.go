package sqlstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// TestPostgresHotTablesHaveNoTriggers pins what migrations 000007 and 000008 bought: on Postgres no
// table has a foreign key, and no table of the hot path has a trigger (a foreign key is two
// triggers on each side). The hot statements write a job's rows only when they wrote the job's own
// row, so the keys only repeated that check, at a fifth of Postgres's CPU on a chain run (session
// 15, docs/benchmarks.md). A migration that adds one back must say why, and change this test.
func TestPostgresHotTablesHaveNoTriggers(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	s := openOneConnection(ctx, t)
	db := s.db.WithContext(ctx)

	var keys []string
	require.NoError(t, db.Raw(`SELECT conrelid::regclass::text || ': ' || conname FROM pg_constraint
		WHERE contype = 'f' AND connamespace = current_schema()::regnamespace ORDER BY 1`).Scan(&keys).Error)
	require.Empty(t, keys, "foreign keys in the Postgres schema")

	var triggers []string
	require.NoError(t, db.Raw(`SELECT c.relname || ': ' || t.tgname FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid
		WHERE c.relnamespace = current_schema()::regnamespace
			AND c.relname IN ('jobs', 'job_steps', 'job_events', 'step_attempts', 'job_inputs', 'outbox', 'webhook_deliveries')
		ORDER BY 1`).Scan(&triggers).Error)
	require.Empty(t, triggers, "triggers on the hot path's tables")
}

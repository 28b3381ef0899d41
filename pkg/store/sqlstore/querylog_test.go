package sqlstore

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

// TestQueryLogLevels checks what GORM's queries log: nothing for a lookup that finds nothing, DEBUG
// for the failures callers expect (the duplicate key of a replayed Idempotency-Key, a cancelled
// request), WARN for a real failure, INFO for a slow query; never a value, never ERROR.
func TestQueryLogLevels(t *testing.T) {
	t.Parallel()
	for _, dialect := range []string{DialectPostgres, DialectSQLite} {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			ctx := testinfra.Context(t, time.Minute)
			logs := &testinfra.LogBuffer{}
			cfg := Config{Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			var s *Store
			if dialect == DialectPostgres {
				url := testinfra.PostgresSchema(t)
				require.NoError(t, migrate.Up(ctx, migrate.Postgres, url))
				var err error
				s, err = OpenPostgres(ctx, url, cfg)
				require.NoError(t, err)
			} else {
				path := filepath.Join(t.TempDir(), "cao.db")
				require.NoError(t, migrate.Up(ctx, migrate.SQLite, path))
				var err error
				s, err = OpenSQLite(ctx, path, cfg)
				require.NoError(t, err)
			}
			t.Cleanup(func() { _ = s.Close() })
			logs.Take(t)

			// An Idempotency-Key replay: the second insert is the expected duplicate.
			now := time.Now().UTC()
			rec := &store.IdempotencyRecord{Tenant: "acme", Key: "key-value-never-logged", RequestHash: "h", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
			insert := func() error {
				return s.Tx(ctx, func(tx store.Tx) error { return tx.InsertIdempotencyKey(ctx, rec) })
			}
			require.NoError(t, insert())
			require.ErrorIs(t, insert(), store.ErrDuplicate)
			recs := logs.Take(t)
			require.Len(t, recs, 1)
			require.Equal(t, "DEBUG", recs[0]["level"])
			require.Equal(t, "SQL query failed as expected by its caller", recs[0]["msg"])
			require.Contains(t, recs[0]["sql"], "idempotency_keys")
			require.NotContains(t, recs[0]["sql"], "key-value-never-logged", "values are never logged")

			// A lookup that finds nothing is not logged at all.
			_, err := s.GetIdempotencyKey(ctx, "acme", "missing")
			require.ErrorIs(t, err, store.ErrNotFound)
			require.Empty(t, logs.Take(t))

			// A request that gave up: DEBUG.
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			require.Error(t, s.db.WithContext(cctx).Exec("SELECT 1").Error)
			recs = logs.Take(t)
			require.Len(t, recs, 1)
			require.Equal(t, "DEBUG", recs[0]["level"])

			// A real failure: WARN (the caller decides whether it is an error, and logs it then).
			require.Error(t, s.db.WithContext(ctx).Exec("SELECT id FROM no_such_table").Error)
			recs = logs.Take(t)
			require.Len(t, recs, 1)
			require.Equal(t, "WARN", recs[0]["level"])
			require.Equal(t, "SQL query failed", recs[0]["msg"])
			require.Contains(t, recs[0]["err"], "no_such_table")

			if dialect == DialectPostgres {
				// A slow query: INFO, with its duration and the threshold.
				require.NoError(t, s.db.WithContext(ctx).Exec("SELECT pg_sleep(0.25)").Error)
				recs = logs.Take(t)
				require.Len(t, recs, 1)
				require.Equal(t, "INFO", recs[0]["level"])
				require.Equal(t, "slow SQL query", recs[0]["msg"])
				require.GreaterOrEqual(t, recs[0]["duration_ms"], 250.0)
				require.InDelta(t, slowQuery.Milliseconds(), recs[0]["slow_threshold_ms"], 0)
			}
		})
	}
}

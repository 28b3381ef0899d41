package migrate_test

import (
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/testinfra"
)

var tables = []string{"jobs", "job_steps", "step_attempts", "job_events", "job_inputs", "outbox", "idempotency_keys", "webhook_deliveries"}

func TestLatest(t *testing.T) {
	t.Parallel()
	for _, dialect := range []string{migrate.Postgres, migrate.SQLite} {
		v, err := migrate.Latest(dialect)
		require.NoError(t, err)
		require.GreaterOrEqual(t, v, uint(1), dialect)
	}
	pg, err := migrate.Latest(migrate.Postgres)
	require.NoError(t, err)
	lite, err := migrate.Latest(migrate.SQLite)
	require.NoError(t, err)
	require.Equal(t, pg, lite, "both dialects must have the same migration versions")
}

func TestPostgresUpDownVersion(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	dbURL := testinfra.PostgresSchema(t)
	schema := searchPath(t, dbURL)
	latest, err := migrate.Latest(migrate.Postgres)
	require.NoError(t, err)

	v, dirty, err := migrate.Version(ctx, migrate.Postgres, dbURL)
	require.NoError(t, err)
	require.Zero(t, v)
	require.False(t, dirty)

	require.NoError(t, migrate.Up(ctx, migrate.Postgres, dbURL))
	require.NoError(t, migrate.Up(ctx, migrate.Postgres, dbURL), "a second Up has nothing to do and succeeds")
	v, dirty, err = migrate.Version(ctx, migrate.Postgres, dbURL)
	require.NoError(t, err)
	require.Equal(t, latest, v)
	require.False(t, dirty)

	pg := openPostgres(t)
	require.ElementsMatch(t, append([]string{"schema_migrations"}, tables...), pgTables(t, pg, schema),
		"migrations land in the URL's search_path schema")

	require.NoError(t, migrate.Down(ctx, migrate.Postgres, dbURL, 1))
	v, _, err = migrate.Version(ctx, migrate.Postgres, dbURL)
	require.NoError(t, err)
	require.Equal(t, latest-1, v)
	if latest == 1 {
		require.Equal(t, []string{"schema_migrations"}, pgTables(t, pg, schema))
	}

	// Down further than there is reverts everything; up again restores the schema.
	require.NoError(t, migrate.Down(ctx, migrate.Postgres, dbURL, 100))
	require.Equal(t, []string{"schema_migrations"}, pgTables(t, pg, schema))
	require.NoError(t, migrate.Up(ctx, migrate.Postgres, dbURL))
	v, _, err = migrate.Version(ctx, migrate.Postgres, dbURL)
	require.NoError(t, err)
	require.Equal(t, latest, v)
}

func TestPostgresConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	dbURL := testinfra.PostgresSchema(t)
	latest, err := migrate.Latest(migrate.Postgres)
	require.NoError(t, err)

	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = migrate.Up(ctx, migrate.Postgres, dbURL)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "Up #%d", i)
	}
	v, dirty, err := migrate.Version(ctx, migrate.Postgres, dbURL)
	require.NoError(t, err)
	require.Equal(t, latest, v)
	require.False(t, dirty)
	require.ElementsMatch(t, append([]string{"schema_migrations"}, tables...),
		pgTables(t, openPostgres(t), searchPath(t, dbURL)))
}

func TestSQLiteUpDownVersion(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cao.db")
	latest, err := migrate.Latest(migrate.SQLite)
	require.NoError(t, err)

	v, dirty, err := migrate.Version(ctx, migrate.SQLite, path)
	require.NoError(t, err)
	require.Zero(t, v)
	require.False(t, dirty)

	require.NoError(t, migrate.Up(ctx, migrate.SQLite, path))
	require.NoError(t, migrate.Up(ctx, migrate.SQLite, "sqlite://"+path), "a second Up has nothing to do and succeeds")
	v, dirty, err = migrate.Version(ctx, migrate.SQLite, path)
	require.NoError(t, err)
	require.Equal(t, latest, v)
	require.False(t, dirty)
	require.ElementsMatch(t, append([]string{"schema_migrations"}, tables...), sqliteTables(t, path))

	require.NoError(t, migrate.Down(ctx, migrate.SQLite, path, 1))
	v, _, err = migrate.Version(ctx, migrate.SQLite, path)
	require.NoError(t, err)
	require.Equal(t, latest-1, v)

	require.NoError(t, migrate.Down(ctx, migrate.SQLite, path, 100))
	require.Equal(t, []string{"schema_migrations"}, sqliteTables(t, path))
	require.NoError(t, migrate.Up(ctx, migrate.SQLite, path))
	v, _, err = migrate.Version(ctx, migrate.SQLite, path)
	require.NoError(t, err)
	require.Equal(t, latest, v)
}

func TestSQLiteConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cao.db")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = migrate.Up(ctx, migrate.SQLite, path) })
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "Up #%d", i)
	}
	require.ElementsMatch(t, append([]string{"schema_migrations"}, tables...), sqliteTables(t, path))
}

func TestErrors(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)

	err := migrate.Up(ctx, "mysql", "mysql://localhost/x")
	require.ErrorContains(t, err, `unknown database dialect "mysql"`)

	err = migrate.Down(ctx, migrate.SQLite, filepath.Join(t.TempDir(), "x.db"), 0)
	require.ErrorContains(t, err, "at least 1")

	err = migrate.Up(ctx, migrate.Postgres, "mysql://localhost/x")
	require.ErrorContains(t, err, "want postgres://")

	// Nothing listens on port 1.
	err = migrate.Up(ctx, migrate.Postgres, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5")
	require.ErrorContains(t, err, "connect to postgres")

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	err = migrate.Up(cancelled, migrate.SQLite, filepath.Join(t.TempDir(), "x.db"))
	require.ErrorIs(t, err, context.Canceled)
}

func searchPath(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	schema := u.Query().Get("search_path")
	require.NotEmpty(t, schema)
	return schema
}

func openPostgres(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", testinfra.PostgresURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func pgTables(t *testing.T, db *sql.DB, schema string) []string {
	t.Helper()
	rows, err := db.QueryContext(t.Context(),
		`SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name`, schema)
	require.NoError(t, err)
	return scanNames(t, rows)
}

func sqliteTables(t *testing.T, path string) []string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer func() { _ = db.Close() }()
	rows, err := db.QueryContext(t.Context(),
		`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	require.NoError(t, err)
	return scanNames(t, rows)
}

func scanNames(t *testing.T, rows *sql.Rows) []string {
	t.Helper()
	defer func() { _ = rows.Close() }()
	var names []string
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		names = append(names, n)
	}
	require.NoError(t, rows.Err())
	return names
}

package sqlstore_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/store/storetest"
	"github.com/cao-run/cao/pkg/testinfra"
)

func TestPostgres(t *testing.T) {
	t.Parallel()
	storetest.Run(t, openPostgres)
}

func TestSQLite(t *testing.T) {
	t.Parallel()
	storetest.Run(t, openSQLite)
}

// openPostgres returns a store on a fresh, migrated Postgres schema.
func openPostgres(t *testing.T) store.Store {
	t.Helper()
	ctx := testinfra.Context(t, time.Minute)
	url := testinfra.PostgresSchema(t)
	require.NoError(t, migrate.Up(ctx, migrate.Postgres, url))
	s, err := sqlstore.OpenPostgres(ctx, url, sqlstore.Config{MaxOpenConns: 4})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// openSQLite returns a store on a fresh, migrated SQLite file.
func openSQLite(t *testing.T) store.Store {
	t.Helper()
	ctx := testinfra.Context(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cao.db")
	require.NoError(t, migrate.Up(ctx, migrate.SQLite, path))
	s, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestDialect(t *testing.T) {
	t.Parallel()
	require.Equal(t, "postgres", openPostgres(t).Dialect())
	require.Equal(t, "sqlite", openSQLite(t).Dialect())
}

func TestOpenPostgresUnavailable(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	// Nothing listens on port 1.
	_, err := sqlstore.OpenPostgres(ctx, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5", sqlstore.Config{})
	require.ErrorIs(t, err, store.ErrUnavailable)
}

func TestPostgresBecomesUnavailable(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	s := openPostgres(t)
	require.NoError(t, s.Close())
	// A closed pool is not "unavailable" in the retry-later sense, but it must not look like a
	// missing row either.
	_, err := s.GetJob(ctx, store.AllTenants, "7b0e3c0a-8a55-4a8c-9d8e-0c1f0f4f5e6a")
	require.Error(t, err)
	require.NotErrorIs(t, err, store.ErrNotFound)
}

func TestOpenSQLiteBadPath(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	_, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "missing-dir", "cao.db"), sqlstore.Config{})
	require.ErrorIs(t, err, store.ErrUnavailable)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	require.Equal(t, sqlstore.Config{MaxOpenConns: 10, MaxIdleConns: 10}, sqlstore.Config{}.WithDefaults())
	require.Equal(t, sqlstore.Config{MaxOpenConns: 2, MaxIdleConns: 2}, sqlstore.Config{MaxOpenConns: 2}.WithDefaults())

	ctx := context.Background()
	for _, tc := range []struct {
		cfg   sqlstore.Config
		field string
	}{
		{sqlstore.Config{MaxOpenConns: -1}, "MaxOpenConns"},
		{sqlstore.Config{MaxIdleConns: -1}, "MaxIdleConns"},
		{sqlstore.Config{MaxOpenConns: 2, MaxIdleConns: 3}, "MaxIdleConns"},
	} {
		_, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "x.db"), tc.cfg)
		require.ErrorContains(t, err, tc.field)
	}
}

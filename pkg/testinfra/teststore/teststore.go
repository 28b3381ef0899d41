// Package teststore opens real, migrated stores for tests: a fresh Postgres schema or a SQLite file.
package teststore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/testinfra"
)

// Postgres returns a store on a fresh, migrated schema of the test database, and its URL.
func Postgres(t testing.TB) (store.Store, string) {
	t.Helper()
	url := testinfra.PostgresSchema(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrate.Up(ctx, "postgres", url); err != nil {
		t.Fatalf("migrate postgres: %v", err)
	}
	st, err := sqlstore.OpenPostgres(ctx, url, sqlstore.Config{})
	if err != nil {
		t.Fatalf("open postgres store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st, url
}

// SQLite returns a store on a fresh, migrated SQLite file in the test's temp dir.
func SQLite(t testing.TB) store.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cao.db")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrate.Up(ctx, "sqlite", path); err != nil {
		t.Fatalf("migrate sqlite: %v", err)
	}
	st, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Config{})
	if err != nil {
		t.Fatalf("open sqlite store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

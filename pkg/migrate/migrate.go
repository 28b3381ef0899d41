// Package migrate applies CAO's embedded SQL migrations (module github.com/cao-run/cao/db) to Postgres
// or SQLite with golang-migrate. On Postgres it holds an advisory lock while it works, so any number of
// processes may call Up at start at the same time.
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strconv"
	"strings"
	"sync"

	caodb "github.com/cao-run/cao/db"
	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	migratesqlite "github.com/golang-migrate/migrate/v4/database/sqlite"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// Dialects accepted by Up, Down, Version and Latest.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

// sqliteMu serializes SQLite migrations in this process: golang-migrate's SQLite lock is per driver
// instance, and the embedded deployment runs in one process.
var sqliteMu sync.Mutex

// Up applies every pending migration to the database at url. Having nothing to apply is success.
func Up(ctx context.Context, dialect, url string) error {
	err := run(ctx, dialect, url, func(m *migrate.Migrate) error { return m.Up() })
	if err != nil {
		return fmt.Errorf("migrate %s up: %w", dialect, err)
	}
	return nil
}

// Down reverts the newest n applied migrations (fewer if fewer are applied).
func Down(ctx context.Context, dialect, url string, n int) error {
	if n < 1 {
		return fmt.Errorf("migrate %s down: number of migrations to revert must be at least 1, got %d", dialect, n)
	}
	err := run(ctx, dialect, url, func(m *migrate.Migrate) error {
		if _, _, err := m.Version(); errors.Is(err, migrate.ErrNilVersion) {
			return nil // nothing applied, nothing to revert
		}
		err := m.Steps(-n)
		var short migrate.ErrShortLimit
		if errors.As(err, &short) {
			return nil // reverted everything there was
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("migrate %s down %d: %w", dialect, n, err)
	}
	return nil
}

// Version returns the newest applied migration (0 when none is) and whether a failed migration left
// the schema dirty.
func Version(ctx context.Context, dialect, url string) (version uint, dirty bool, err error) {
	err = run(ctx, dialect, url, func(m *migrate.Migrate) error {
		version, dirty, err = m.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			version, dirty, err = 0, false, nil
		}
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("migrate %s version: %w", dialect, err)
	}
	return version, dirty, nil
}

// Latest returns the newest migration version embedded for dialect, the version Up migrates to.
func Latest(dialect string) (uint, error) {
	fsys, dir, err := caodb.Migrations(dialect)
	if err != nil {
		return 0, err
	}
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return 0, fmt.Errorf("read %s migrations: %w", dialect, err)
	}
	var latest uint
	for _, e := range entries {
		prefix, _, ok := strings.Cut(e.Name(), "_")
		if !ok || !strings.HasSuffix(e.Name(), ".up.sql") {
			continue
		}
		v, err := strconv.ParseUint(prefix, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s migration %q: version prefix is not a number", dialect, e.Name())
		}
		latest = max(latest, uint(v))
	}
	return latest, nil
}

// run opens a migrator for dialect and url, calls fn with it and closes it. Cancelling ctx stops
// between two migrations (golang-migrate cannot interrupt one that is running).
func run(ctx context.Context, dialect, dbURL string, fn func(*migrate.Migrate) error) (err error) {
	fsys, dir, err := caodb.Migrations(dialect)
	if err != nil {
		return err
	}
	src, err := iofs.New(fsys, dir)
	if err != nil {
		return fmt.Errorf("read embedded migrations: %w", err)
	}
	if dialect == SQLite {
		sqliteMu.Lock()
		defer sqliteMu.Unlock()
	}
	drv, driverName, err := openDatabase(ctx, dialect, dbURL)
	if err != nil {
		_ = src.Close()
		return err
	}
	m, err := migrate.NewWithInstance("iofs", src, driverName, drv)
	if err != nil {
		_ = src.Close()
		_ = drv.Close()
		return err
	}
	defer func() {
		srcErr, dbErr := m.Close()
		if err == nil {
			err = errors.Join(srcErr, dbErr)
		}
	}()
	stop := context.AfterFunc(ctx, func() { m.GracefulStop <- true })
	defer stop()
	if err := fn(m); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return err
	}
	return ctx.Err()
}

// openDatabase connects to the database and returns the golang-migrate driver for it.
func openDatabase(ctx context.Context, dialect, dbURL string) (database.Driver, string, error) {
	switch dialect {
	case Postgres:
		dsn, err := postgresDSN(dbURL)
		if err != nil {
			return nil, "", err
		}
		sqlDB, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, "", fmt.Errorf("open postgres: %w", err)
		}
		if err := sqlDB.PingContext(ctx); err != nil {
			_ = sqlDB.Close()
			return nil, "", fmt.Errorf("connect to postgres: %w", err)
		}
		// The driver creates schema_migrations in current_schema(), the first schema of the URL's
		// search_path, and derives its advisory lock id from the database and that schema.
		drv, err := migratepgx.WithInstance(sqlDB, &migratepgx.Config{})
		if err != nil {
			_ = sqlDB.Close()
			return nil, "", fmt.Errorf("prepare postgres for migrations: %w", err)
		}
		return drv, "pgx5", nil
	case SQLite:
		sqlDB, err := sql.Open("sqlite", sqliteDSN(dbURL))
		if err != nil {
			return nil, "", fmt.Errorf("open sqlite: %w", err)
		}
		if err := sqlDB.PingContext(ctx); err != nil {
			_ = sqlDB.Close()
			return nil, "", fmt.Errorf("open sqlite %q: %w", dbURL, err)
		}
		drv, err := migratesqlite.WithInstance(sqlDB, &migratesqlite.Config{})
		if err != nil {
			_ = sqlDB.Close()
			return nil, "", fmt.Errorf("prepare sqlite for migrations: %w", err)
		}
		return drv, "sqlite", nil
	}
	return nil, "", fmt.Errorf("unknown database dialect %q (want %q or %q)", dialect, Postgres, SQLite)
}

// postgresDSN turns a postgres://, postgresql:// or pgx5:// URL into one pgx accepts, without
// golang-migrate's x- options (which pgx would send to the server as settings).
func postgresDSN(dbURL string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", fmt.Errorf("parse postgres url: %w", err)
	}
	switch u.Scheme {
	case "postgres", "postgresql", "pgx", "pgx5":
	default:
		return "", fmt.Errorf("postgres url: scheme %q, want postgres://", u.Scheme)
	}
	u.Scheme = "postgres"
	return migrate.FilterCustomQuery(u).String(), nil
}

// sqliteDSN turns a file path (or sqlite://path) into a modernc DSN that waits for locks held by
// other connections instead of failing, and takes the write lock when a transaction begins.
func sqliteDSN(path string) string {
	path = strings.TrimPrefix(path, "sqlite://")
	params := "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate"
	if strings.Contains(path, "?") {
		return path + "&" + params
	}
	return path + "?" + params
}

// Package sqlstore implements store.Store with GORM on Postgres (the split deployment's source of
// truth) and on SQLite (the embedded single-process mode). Both dialects share one code path; the few
// differences (row locks, SKIP LOCKED, connection settings) are switched on the dialect. The schema
// comes from the migrations in module github.com/cao-run/cao/db (package migrate applies them).
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/libtnb/sqlite"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/cao-run/cao/pkg/store"
)

// Dialect names returned by Store.Dialect.
const (
	DialectPostgres = "postgres"
	DialectSQLite   = "sqlite"
)

const (
	// txAttempts is how many times Tx runs fn when it fails with a retryable error.
	txAttempts = 5
	// txBackoff is the base delay before the second run; it doubles per run, with jitter.
	txBackoff = 10 * time.Millisecond
	// sqliteBusyTimeout is how long a SQLite connection waits for another one's lock.
	sqliteBusyTimeout = 10 * time.Second
	// slowQuery is the duration above which a query is logged when Config.Logger is set.
	slowQuery = 200 * time.Millisecond
	// DefaultMaxOpenConns is Config.MaxOpenConns' default.
	DefaultMaxOpenConns = 10
	// defaultIdleInTxTimeout is Config.IdleInTxTimeout's default.
	defaultIdleInTxTimeout = 5 * time.Second
)

// Config holds the optional settings of a Store; the zero value is ready to use.
type Config struct {
	// MaxOpenConns caps the connections the pool opens. Default 10.
	MaxOpenConns int
	// MaxIdleConns is how many idle connections the pool keeps. Default MaxOpenConns: a pool that
	// closes connections it will need again a moment later pays a connection set-up per request
	// under load.
	MaxIdleConns int
	// Logger receives slow queries (over 200ms) at INFO and failed queries at WARN; the failures
	// callers expect — a duplicate key (an Idempotency-Key replay), a cancelled context, a
	// serialization failure or busy database that Tx runs again — are DEBUG, and "no row" is never
	// logged. Only the parameterized SQL is logged, never values. Default: nothing is logged.
	Logger *slog.Logger
	// IdleInTxTimeout is how long Postgres lets one of the store's sessions sit idle inside a
	// transaction before it ends the session and so releases its row locks: a process that is stopped
	// (SIGSTOP, VM freeze) or cut off mid-transaction must not block its jobs, nor the reaper that
	// would re-run them, for ever. CAO's transactions are short (the outbox relay's waits only on
	// Redis). Zero means 5s; negative leaves the server's setting; an
	// idle_in_transaction_session_timeout in the URL wins.
	IdleInTxTimeout time.Duration
}

// WithDefaults returns a copy of c with every unset field given its documented default.
func (c Config) WithDefaults() Config {
	if c.MaxOpenConns == 0 {
		c.MaxOpenConns = DefaultMaxOpenConns
	}
	if c.MaxIdleConns == 0 {
		c.MaxIdleConns = c.MaxOpenConns
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.MaxOpenConns < 0:
		return fmt.Errorf("sqlstore config: MaxOpenConns must not be negative, got %d", c.MaxOpenConns)
	case c.MaxIdleConns < 0:
		return fmt.Errorf("sqlstore config: MaxIdleConns must not be negative, got %d", c.MaxIdleConns)
	case c.MaxIdleConns > c.MaxOpenConns:
		return fmt.Errorf("sqlstore config: MaxIdleConns (%d) must not exceed MaxOpenConns (%d)", c.MaxIdleConns, c.MaxOpenConns)
	}
	return nil
}

// Store is the GORM implementation of store.Store for Postgres and SQLite.
type Store struct {
	queries
	hot hotPath
	// writeSem serializes write transactions in this process on SQLite, which has one writer at a
	// time anyway: waiting here is cheaper than polling SQLite's busy handler. Nil on Postgres.
	writeSem chan struct{}
}

var _ store.Store = (*Store)(nil)

// OpenPostgres connects to the Postgres database at url (postgres://...; a search_path parameter
// selects the schema) and checks that it answers.
func OpenPostgres(ctx context.Context, url string, cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	db, err := gorm.Open(postgres.New(postgres.Config{DSN: postgresDSN(url, cfg)}), gormConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", interpretError(err))
	}
	return newStore(ctx, db, DialectPostgres, cfg)
}

// postgresDSN adds the session settings the store relies on to a Postgres URL or keyword/value DSN
// (pgx sends unknown parameters as run-time settings), each unless the DSN sets it itself:
//   - idle_in_transaction_session_timeout (Config.IdleInTxTimeout; not added when negative);
//   - enable_seqscan=off. Every statement the store sends finds its rows through an index
//     (TestHotQueriesUseIndexes checks the read and hot paths with this very setting), and a
//     statement's plan is made once per connection and kept: made while a table is new and small (a
//     fresh deployment's first minute, before autovacuum has analyzed it), it scans the whole table,
//     and keeps doing so as the table grows. The group commit's update read every job row of a fresh
//     database on each commit that way (session 12, docs/benchmarks.md). A statement with no index to
//     use still scans its table: the setting only makes the planner prefer an index where one serves.
func postgresDSN(dsn string, cfg Config) string {
	idle := cfg.IdleInTxTimeout
	if idle == 0 {
		idle = defaultIdleInTxTimeout
	}
	var params []string
	if idle >= 0 {
		params = append(params, fmt.Sprintf("idle_in_transaction_session_timeout=%d", idle.Milliseconds()))
	}
	params = append(params, "enable_seqscan=off")
	url := strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
	for _, param := range params {
		if key, _, _ := strings.Cut(param, "="); strings.Contains(dsn, key) {
			continue
		}
		switch {
		case !url:
			dsn += " " + param
		case strings.Contains(dsn, "?"):
			dsn += "&" + param
		default:
			dsn += "?" + param
		}
	}
	return dsn
}

// OpenSQLite opens the SQLite database file at path (created if missing) in WAL mode, with foreign
// keys on, a 10s busy timeout and write transactions that take the write lock when they begin.
func OpenSQLite(ctx context.Context, path string, cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	db, err := gorm.Open(sqlite.Open(sqliteDSN(path)), gormConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w", path, interpretError(err))
	}
	s, err := newStore(ctx, db, DialectSQLite, cfg)
	if err != nil {
		return nil, err
	}
	s.writeSem = make(chan struct{}, 1)
	return s, nil
}

// sqliteDSN adds the connection settings the store relies on to a SQLite file path:
//   - _txlock=immediate: BEGIN IMMEDIATE, so a write transaction never fails to upgrade a read lock;
//   - _time_integer_format=unix_micro and _inttotime=1: times are INTEGER microseconds since the
//     epoch (UTC), read back into time.Time from TIMESTAMP columns. Integers compare and sort
//     exactly, with Postgres' precision; the driver's text formats trim trailing zeros and would
//     make comparisons depend on the formatting rather than on the instant.
func sqliteDSN(path string) string {
	params := strings.Join([]string{
		"_txlock=immediate",
		fmt.Sprintf("_pragma=busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()),
		"_pragma=journal_mode(WAL)",
		"_pragma=foreign_keys(1)",
		"_pragma=synchronous(NORMAL)", // safe with WAL: a power loss may lose the last commits, never corrupts
		"_time_integer_format=unix_micro",
		"_inttotime=1",
	}, "&")
	if strings.Contains(path, "?") {
		return path + "&" + params
	}
	return path + "?" + params
}

func gormConfig(cfg Config) *gorm.Config {
	log := logger.Discard
	if cfg.Logger != nil {
		log = queryLogger{log: cfg.Logger}
	}
	return &gorm.Config{
		Logger:                 log,
		NowFunc:                now,
		SkipDefaultTransaction: true, // every write runs in an explicit Tx
		DisableAutomaticPing:   true, // newStore pings with the caller's ctx
	}
}

// queryLogger is GORM's logger (Config.Logger): slow queries at INFO, failed ones at WARN, and the
// failures callers expect at DEBUG or not at all, so a normal event (a replayed Idempotency-Key, a
// lookup that finds nothing, a request that gave up) never shows as a warning or an error. The
// caller of a query that failed decides whether that is an error, and logs it if so.
type queryLogger struct {
	log    *slog.Logger
	silent bool
}

var (
	_ logger.Interface  = queryLogger{}
	_ gorm.ParamsFilter = queryLogger{}
)

func (l queryLogger) LogMode(level logger.LogLevel) logger.Interface {
	l.silent = level <= logger.Silent
	return l
}

func (l queryLogger) Info(ctx context.Context, msg string, data ...any) {
	l.emit(ctx, slog.LevelInfo, fmt.Sprintf(msg, data...))
}

func (l queryLogger) Warn(ctx context.Context, msg string, data ...any) {
	l.emit(ctx, slog.LevelWarn, fmt.Sprintf(msg, data...))
}

func (l queryLogger) Error(ctx context.Context, msg string, data ...any) {
	l.emit(ctx, slog.LevelError, fmt.Sprintf(msg, data...))
}

func (l queryLogger) emit(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if l.silent {
		return
	}
	if ctx == nil {
		ctx = context.Background()
	}
	l.log.LogAttrs(ctx, level, msg, attrs...)
}

// Trace logs one query: slow ones and failed ones (see queryLogger).
func (l queryLogger) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), err error) {
	elapsed := time.Since(begin)
	if ctx == nil {
		ctx = context.Background()
	}
	var (
		level slog.Level
		msg   string
	)
	switch {
	case err == nil && elapsed < slowQuery:
		return
	case err == nil:
		level, msg = slog.LevelInfo, "slow SQL query"
	case errors.Is(err, gorm.ErrRecordNotFound), errors.Is(err, sql.ErrNoRows):
		return
	case isUniqueViolation(err), retryable(err), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		level, msg = slog.LevelDebug, "SQL query failed as expected by its caller"
	default:
		level, msg = slog.LevelWarn, "SQL query failed"
	}
	if l.silent || !l.log.Enabled(ctx, level) {
		return
	}
	query, rows := fc()
	attrs := []slog.Attr{slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000), slog.String("sql", query)}
	if err == nil {
		attrs = append(attrs, slog.Int64("slow_threshold_ms", slowQuery.Milliseconds()))
	}
	if rows >= 0 {
		attrs = append(attrs, slog.Int64("rows", rows))
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	l.emit(ctx, level, msg, attrs...)
}

// ParamsFilter drops the query's values: only the parameterized SQL is ever logged (inputs may hold
// secrets).
func (queryLogger) ParamsFilter(_ context.Context, query string, _ ...any) (string, []any) {
	return query, nil
}

func newStore(ctx context.Context, db *gorm.DB, dialect string, cfg Config) (*Store, error) {
	sqlDB, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dialect, err)
	}
	sqlDB.SetMaxOpenConns(cfg.MaxOpenConns)
	sqlDB.SetMaxIdleConns(cfg.MaxIdleConns)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{queries: queries{db: db, dialect: dialect}}
	if dialect == DialectPostgres {
		s.hot = newPostgresHot(sqlDB)
	} else {
		s.hot = genericHot{s: s}
	}
	if err := s.Ping(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("open %s: %w", dialect, err)
	}
	return s, nil
}

// Dialect names the backend: "postgres" or "sqlite".
func (s *Store) Dialect() string { return s.dialect }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s: %w", s.dialect, interpretError(err))
	}
	return nil
}

// Close releases the connection pool.
func (s *Store) Close() error {
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	return sqlDB.Close()
}

// Tx runs fn in one transaction, committing if fn returns nil and rolling back otherwise. When the
// transaction fails with a Postgres serialization failure or deadlock, or SQLite busy/locked, it runs
// fn again (up to 5 runs in all, with a short jittered backoff), so fn must not have effects outside
// the transaction that cannot be repeated.
func (s *Store) Tx(ctx context.Context, fn func(tx store.Tx) error) error {
	for run := 1; ; run++ {
		err := s.txOnce(ctx, fn)
		if err == nil || run == txAttempts || !retryable(err) {
			return err
		}
		backoff := txBackoff << (run - 1)
		backoff = backoff/2 + rand.N(backoff) // jitter: 0.5x to 1.5x
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

func (s *Store) txOnce(ctx context.Context, fn func(tx store.Tx) error) error {
	if s.writeSem != nil {
		select {
		case s.writeSem <- struct{}{}:
			defer func() { <-s.writeSem }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := s.db.WithContext(ctx).Transaction(func(gtx *gorm.DB) error {
		return fn(&txn{queries: queries{db: gtx, dialect: s.dialect}})
	})
	if err != nil {
		// fn's own errors come back as they are; BEGIN and COMMIT failures are interpreted here.
		return interpretError(err)
	}
	return nil
}

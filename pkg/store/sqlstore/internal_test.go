package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/storetest"
	"github.com/cao-run/cao/pkg/testinfra"
)

func TestInterpretError(t *testing.T) {
	t.Parallel()
	driverErr := errors.New("some driver error")
	cases := []struct {
		name string
		err  error
		want error // nil: returned unchanged
	}{
		{"record not found", gorm.ErrRecordNotFound, store.ErrNotFound},
		{"wrapped record not found", fmt.Errorf("x: %w", gorm.ErrRecordNotFound), store.ErrNotFound},
		{"pg unique violation", &pgconn.PgError{Code: "23505"}, store.ErrDuplicate},
		{"pg connection failure", &pgconn.PgError{Code: "08006"}, store.ErrUnavailable},
		{"pg admin shutdown", &pgconn.PgError{Code: "57P01"}, store.ErrUnavailable},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, store.ErrUnavailable},
		{"pg check violation", &pgconn.PgError{Code: "23514"}, nil},
		{"pg serialization failure", &pgconn.PgError{Code: "40001"}, nil},
		{"other", driverErr, nil},
	}
	for _, tc := range cases {
		got := interpretError(tc.err)
		if tc.want == nil {
			require.Equal(t, tc.err, got, tc.name)
			continue
		}
		require.ErrorIs(t, got, tc.want, tc.name)
		if !errors.Is(tc.err, gorm.ErrRecordNotFound) {
			require.ErrorIs(t, got, tc.err, "%s: the driver error stays in the chain", tc.name)
		}
	}
	require.NoError(t, interpretError(nil))
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	require.True(t, retryable(&pgconn.PgError{Code: "40001"}))
	require.True(t, retryable(fmt.Errorf("lock job: %w", &pgconn.PgError{Code: "40P01"})))
	require.False(t, retryable(&pgconn.PgError{Code: "23505"}))
	require.False(t, retryable(errors.New("boom")))
}

// TestTxRetries checks that Tx runs fn again after a serialization failure, and gives up after
// txAttempts runs.
func TestTxRetries(t *testing.T) {
	t.Parallel()
	for _, s := range []*Store{openTestSQLite(t), openTestPostgres(t)} {
		ctx := testinfra.Context(t, time.Minute)
		serialization := &pgconn.PgError{Code: "40001"}

		calls := 0
		err := s.Tx(ctx, func(tx store.Tx) error {
			calls++
			if calls < 3 {
				return fmt.Errorf("update job: %w", serialization)
			}
			return nil
		})
		require.NoError(t, err, s.Dialect())
		require.Equal(t, 3, calls, s.Dialect())

		calls = 0
		err = s.Tx(ctx, func(tx store.Tx) error { calls++; return serialization })
		require.ErrorIs(t, err, serialization, s.Dialect())
		require.Equal(t, txAttempts, calls, s.Dialect())
	}
}

// TestPostgresDeadlockRetried provokes a real deadlock and checks that Tx runs the victim again.
func TestPostgresDeadlockRetried(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	s := openTestPostgres(t)
	a, b := newTestJob(), newTestJob()
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		if err := tx.InsertJob(ctx, a); err != nil {
			return err
		}
		return tx.InsertJob(ctx, b)
	}))

	// Two transactions lock the two jobs in opposite orders; Postgres kills one as a deadlock
	// victim, and Tx runs it again.
	lockedFirst := make(chan struct{}, 2)
	bothLocked := make(chan struct{})
	var calls [2]int
	run := func(i int, first, second string) error {
		return s.Tx(ctx, func(tx store.Tx) error {
			calls[i]++
			if _, err := tx.LockJob(ctx, first); err != nil {
				return err
			}
			if calls[i] == 1 {
				lockedFirst <- struct{}{}
				<-bothLocked
			}
			j, err := tx.LockJob(ctx, second)
			if err != nil {
				return err
			}
			j.LastSeq++
			return tx.UpdateJob(ctx, j)
		})
	}
	errs := make(chan error, 2)
	go func() { errs <- run(0, a.ID, b.ID) }()
	go func() { errs <- run(1, b.ID, a.ID) }()
	<-lockedFirst
	<-lockedFirst
	close(bothLocked)
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	require.Equal(t, 3, calls[0]+calls[1], "the deadlock victim ran twice")
	ja, err := s.GetJob(ctx, store.AllTenants, a.ID)
	require.NoError(t, err)
	jb, err := s.GetJob(ctx, store.AllTenants, b.ID)
	require.NoError(t, err)
	require.EqualValues(t, 2, ja.LastSeq+jb.LastSeq)
}

// TestSQLiteStoresIntegerMicroseconds checks the time representation the SQLite schema relies on.
func TestSQLiteStoresIntegerMicroseconds(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	s := openTestSQLite(t)
	j := newTestJob()
	j.CreatedAt = time.Date(2030, 1, 2, 3, 4, 5, 6007008, time.UTC)
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertJob(ctx, j) }))
	var typ string
	var micros int64
	require.NoError(t, s.db.WithContext(ctx).Raw(
		"SELECT typeof(created_at), CAST(created_at AS INTEGER) FROM jobs WHERE id = ?", j.ID).Row().Scan(&typ, &micros))
	require.Equal(t, "integer", typ)
	require.Equal(t, j.CreatedAt.UnixMicro(), micros)
	require.Equal(t, time.Date(2030, 1, 2, 3, 4, 5, 6007000, time.UTC), j.CreatedAt)
}

func newTestJob() *store.Job {
	return &store.Job{
		ID:          "0d6f4a4e-3b7e-4f43-9a59-" + testinfra.RandomSuffix(),
		FeatureName: "f",
		Status:      store.JobRunning,
		Input:       []byte(`{}`),
	}
}

func openTestSQLite(t *testing.T) *Store {
	t.Helper()
	ctx := testinfra.Context(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cao.db")
	require.NoError(t, migrate.Up(ctx, migrate.SQLite, path))
	s, err := OpenSQLite(ctx, path, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openTestPostgres(t *testing.T) *Store {
	t.Helper()
	ctx := testinfra.Context(t, time.Minute)
	url := testinfra.PostgresSchema(t)
	require.NoError(t, migrate.Up(ctx, migrate.Postgres, url))
	s, err := OpenPostgres(ctx, url, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestGroupCommit queues the changes of many jobs before a committer runs, so they are written by
// group statements (maxGroup at a time), and checks each change's outcome as if applied alone: the
// stale and the step-conflicting ones refused without a row written, the others written with the
// outbox ids of their own tasks.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	s := openTestPostgres(t)
	ctx := testinfra.Context(t, time.Minute)
	for _, tc := range []struct {
		name string
		n    int
	}{{"one group with step conflicts", 30}, {"more than a group", maxGroup + 10}} {
		changes, check := storetest.ManyJobChanges(t, s, tc.n)
		g := s.hot.(postgresHot).group
		pending := make([]*pendingChange, len(changes))
		g.mu.Lock()
		for i, c := range changes {
			require.NoError(t, normalizeChange(c))
			pending[i] = &pendingChange{ctx: ctx, c: c, done: make(chan error, 1)}
			g.queue = append(g.queue, pending[i])
		}
		g.running++
		g.mu.Unlock()
		g.commitLoop()
		errs := make([]error, len(pending))
		for i, pc := range pending {
			errs[i] = <-pc.done
		}
		check(errs)
	}
}

// TestGroupCommitWithoutConflicts is TestGroupCommit where no change is refused, so the group
// statement itself (not the one-by-one fallback a step conflict causes) writes every change.
func TestGroupCommitWithoutConflicts(t *testing.T) {
	t.Parallel()
	s := openTestPostgres(t)
	ctx := testinfra.Context(t, time.Minute)
	changes, check := storetest.ManyJobChanges(t, s, 4) // the fifth would be stale, the seventh conflicting
	for _, c := range changes {
		require.NoError(t, normalizeChange(c))
	}
	errs, err := s.hot.(postgresHot).applyGroup(ctx, changes)
	require.NoError(t, err)
	check(errs)

	// A group with a stale change: the statement writes the others and refuses it.
	more, check2 := storetest.ManyJobChanges(t, s, 5)
	for _, c := range more {
		require.NoError(t, normalizeChange(c))
	}
	errs, err = s.hot.(postgresHot).applyGroup(ctx, more)
	require.NoError(t, err)
	check2(errs)
}

// TestGroupCommitCreates drives creates through a group statement: duplicates of an existing job
// are refused without a row, the others written with their own outbox ids.
func TestGroupCommitCreates(t *testing.T) {
	t.Parallel()
	s := openTestPostgres(t)
	ctx := testinfra.Context(t, time.Minute)
	changes, check := storetest.ManyJobCreates(t, s, 12)
	for _, c := range changes {
		require.NoError(t, normalizeChange(c))
	}
	errs, err := s.hot.(postgresHot).applyGroup(ctx, changes)
	require.NoError(t, err)
	check(errs)
}

// TestGroupCommitStalledCommitter: a change whose job row is locked elsewhere stalls its committer;
// a change of another job that arrives meanwhile starts another committer and is written at once,
// and the stalled one is written when the lock is released.
func TestGroupCommitStalledCommitter(t *testing.T) {
	t.Parallel()
	s := openTestPostgres(t)
	ctx := testinfra.Context(t, time.Minute)
	changes, check := storetest.ManyJobChanges(t, s, 2)
	errs := make([]error, 2)
	first, unlock := stallCommitter(t, ctx, s, changes[0], &errs[0])
	errs[1] = s.Apply(ctx, changes[1])
	require.NoError(t, errs[1], "another job's change is written while the first committer is stalled")
	select {
	case <-first:
		t.Fatal("the locked job's change was written while its row was locked")
	default:
	}
	unlock()
	<-first
	check(errs)
}

// stallCommitter locks the row of c's job in a transaction of its own, then applies c in the
// background (its outcome in *err, first closed once it is known) and waits until c's statement
// waits for the lock; unlock releases it.
func stallCommitter(t *testing.T, ctx context.Context, s *Store, c *store.Change, err *error) (first <-chan struct{}, unlock func()) {
	t.Helper()
	sqlDB, e := s.db.DB()
	require.NoError(t, e)
	lock, e := sqlDB.BeginTx(ctx, nil)
	require.NoError(t, e)
	_, e = lock.ExecContext(ctx, "SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", c.Job.ID)
	require.NoError(t, e)
	done := make(chan struct{})
	go func() {
		defer close(done)
		*err = s.Apply(ctx, c)
	}()
	testinfra.Eventually(t, 10*time.Second, func() bool {
		var waiting bool
		e := sqlDB.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'WITH jb AS%')`).Scan(&waiting)
		return e == nil && waiting
	}, "the change waits for its job's row lock")
	return done, func() { require.NoError(t, lock.Rollback()) }
}

// TestUrgentChangeSkipsTheQueue stalls the group committer on a locked job and checks that an
// urgent change of another job is written at once by a statement of its own: it is never queued,
// and no second committer is started for it.
func TestUrgentChangeSkipsTheQueue(t *testing.T) {
	t.Parallel()
	s := openTestPostgres(t)
	ctx := testinfra.Context(t, time.Minute)
	changes, check := storetest.ManyJobChanges(t, s, 2)
	errs := make([]error, 2)
	first, unlock := stallCommitter(t, ctx, s, changes[0], &errs[0])
	changes[1].Urgent = true
	errs[1] = s.Apply(ctx, changes[1])
	require.NoError(t, errs[1], "the urgent change is written while the committer is stalled")
	g := s.hot.(postgresHot).group
	g.mu.Lock()
	running, queued := g.running, len(g.queue)
	g.mu.Unlock()
	require.Equal(t, 1, running, "no committer was started for the urgent change")
	require.Zero(t, queued)
	unlock()
	<-first
	check(errs)
}

// TestWarm checks that Warm opens the connections it is asked for and prepares the hot statements
// on each, so that the first steps after a start neither open a connection nor parse a statement.
func TestWarm(t *testing.T) {
	t.Parallel()
	s := openTestPostgres(t)
	ctx := testinfra.Context(t, time.Minute)
	const n = 4
	require.NoError(t, s.Warm(ctx, n))
	sqlDB, err := s.db.DB()
	require.NoError(t, err)
	require.Equal(t, n, sqlDB.Stats().OpenConnections)
	// Hold every connection at once, so each is asked about itself.
	conns := make([]*sql.Conn, n)
	for i := range conns {
		conns[i], err = sqlDB.Conn(ctx)
		require.NoError(t, err)
	}
	require.Equal(t, n, sqlDB.Stats().OpenConnections, "no connection was opened beyond the warm ones")
	for i, c := range conns {
		var prepared int
		require.NoError(t, c.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_statements WHERE statement = ANY ($1)`,
			hotStatements).Scan(&prepared))
		require.Equal(t, len(hotStatements), prepared, "connection %d", i)
		var planned int
		require.NoError(t, c.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_statements
			WHERE statement = ANY ($1) AND generic_plans + custom_plans > 0`, hotStatements).Scan(&planned))
		require.Equal(t, len(hotStatements), planned, "connection %d: every hot statement ran once", i)
		require.NoError(t, c.Close())
	}
	// The rehearsal of the hot statements on each connection (rehearse) left nothing behind, and
	// planned every statement there.
	for _, table := range []string{"jobs", "job_steps", "job_events", "step_attempts", "job_inputs", "outbox"} {
		var rows int
		require.NoError(t, sqlDB.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&rows))
		require.Zero(t, rows, "%s after Warm", table)
	}
	// A warm statement runs as prepared: loading a job that does not exist still answers.
	_, _, err = s.LoadJob(ctx, "00000000-0000-0000-0000-000000000001")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.Equal(t, n, sqlDB.Stats().OpenConnections)
	// More than the pool holds warms the whole pool, and does not wait for a connection that
	// never comes.
	require.NoError(t, s.Warm(ctx, 1000))
	require.Equal(t, DefaultMaxOpenConns, sqlDB.Stats().OpenConnections)
}

// TestStallLimitFollowsStatements checks the stall limit of the group committer: at least
// minStall, stallFactor times the recent mean statement time when that is longer, at most maxStall.
func TestStallLimitFollowsStatements(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ mean, want time.Duration }{
		{0, minStall},
		{5 * time.Millisecond, minStall},
		{25 * time.Millisecond, 200 * time.Millisecond},
		{time.Second, maxStall},
	} {
		g := &groupCommitter{mean: tc.mean}
		require.Equal(t, tc.want, g.stallLimit(), "mean %s", tc.mean)
	}
}

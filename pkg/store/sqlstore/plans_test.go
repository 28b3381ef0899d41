package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

// statement is one SQL statement the store ran, with its arguments.
type statement struct {
	sql  string
	vars []any
}

// TestHotQueriesUseIndexes runs every query of the store's read and hot paths on a small seeded
// Postgres database, captures the SQL it sends, and checks with EXPLAIN, on one of the store's own
// connections (which prefer indexes: postgresDSN), that an index serves each one: none may need to
// read a whole table, so their cost does not grow with the history kept.
func TestHotQueriesUseIndexes(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, 2*time.Minute)
	s := openOneConnection(ctx, t)
	ids := seedPlans(ctx, t, s)
	require.NoError(t, s.db.WithContext(ctx).Exec("ANALYZE").Error)

	var (
		mu       sync.Mutex
		captured []statement
	)
	capture := func(db *gorm.DB) {
		mu.Lock()
		defer mu.Unlock()
		captured = append(captured, statement{db.Statement.SQL.String(), append([]any(nil), db.Statement.Vars...)})
	}
	cb := s.db.Callback()
	require.NoError(t, cb.Query().After("gorm:query").Register("test:capture", capture))
	require.NoError(t, cb.Raw().After("gorm:raw").Register("test:capture", capture))
	require.NoError(t, cb.Delete().After("gorm:delete").Register("test:capture", capture))
	require.NoError(t, cb.Update().After("gorm:update").Register("test:capture", capture))

	now := time.Now()
	id := ids[len(ids)/2+1] // a finished job
	_, err := s.GetJob(ctx, store.AllTenants, id)
	require.NoError(t, err)
	_, err = s.GetSteps(ctx, id)
	require.NoError(t, err)
	_, err = s.GetAttempts(ctx, id)
	require.NoError(t, err)
	_, err = s.GetJobInputs(ctx, id)
	require.NoError(t, err)
	_, err = s.ListEvents(ctx, id, 1, 100)
	require.NoError(t, err)
	tenant := store.TenantScope("acme")
	_, err = s.GetJob(ctx, tenant, id)
	require.ErrorIs(t, err, store.ErrNotFound)
	after := &store.Cursor{CreatedAt: now.Add(-time.Hour), ID: id}
	for _, f := range []store.JobFilter{
		{Scope: store.AllTenants, Limit: 50},
		{Scope: store.AllTenants, Status: store.JobCompleted, Limit: 50},
		{Scope: store.AllTenants, Limit: 50, After: after},
		{Scope: tenant, Limit: 50},
		{Scope: tenant, Status: store.JobCompleted, Limit: 50},
		{Scope: tenant, Feature: "plan", Limit: 50},
		{Scope: tenant, Status: store.JobCompleted, Feature: "plan", Limit: 50, After: after},
		{Scope: tenant, Limit: 50, After: after},
	} {
		_, err = s.ListJobs(ctx, f)
		require.NoError(t, err)
	}
	_, err = s.ListExpiredSteps(ctx, now, 100)
	require.NoError(t, err)
	_, err = s.ListWaitingSteps(ctx, now, 100)
	require.NoError(t, err)
	_, err = s.ListIdleJobs(ctx, now, 100)
	require.NoError(t, err)
	_, err = s.ListStuckJobs(ctx, now, 100)
	require.NoError(t, err)
	_, err = s.GetIdempotencyKey(ctx, "", "k-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.LastSeqs(ctx, ids[:20])
	require.NoError(t, err)
	require.ErrorIs(t, s.ExtendLease(ctx, id, "s1", 1, 1, "w", now), store.ErrConflict)
	require.NoError(t, s.DeleteOutbox(ctx, []int64{1, 2, 3}))
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		if _, err := tx.ClaimOutbox(ctx, now, 100); err != nil {
			return err
		}
		_, err := tx.DeleteExpiredIdempotencyKeys(ctx, now)
		return err
	}))
	// The maintenance leader's statements: due webhook deliveries, and a retention batch (last: it
	// deletes a few of the seeded finished jobs, so that its deletes are captured too).
	_, err = s.ClaimWebhooks(ctx, now, now.Add(time.Minute), 10)
	require.NoError(t, err)
	deleted, err := s.DeleteFinishedJobs(ctx, now, 3)
	require.NoError(t, err)
	require.EqualValues(t, 3, deleted)
	require.NoError(t, cb.Query().Remove("test:capture"))
	require.NoError(t, cb.Raw().Remove("test:capture"))
	require.NoError(t, cb.Delete().Remove("test:capture"))
	require.NoError(t, cb.Update().Remove("test:capture"))

	// The hot path's own statements (no GORM), with the arguments they are sent with.
	update := &store.Change{Job: &store.Job{ID: id, Status: store.JobRunning, Input: json.RawMessage(`{}`), UpdatedAt: now},
		Version: 1, Steps: []store.StepChange{{Step: store.Step{Name: "s1", Status: store.StepRunning, Run: 1, UpdatedAt: now},
			Expect: store.StepExpect{Status: store.StepQueued, Run: 1}}}}
	single, singleArgs := postgresHot{}.statement(update)
	group, groupArgs := groupStatement([]*store.Change{update})
	captured = append(captured,
		statement{pgLoadJob, []any{id}},
		statement{single, singleArgs},
		statement{group, groupArgs},
	)
	conn := theConnection(ctx, t, s)
	var seqscan string
	require.NoError(t, conn.QueryRowContext(ctx, "SHOW enable_seqscan").Scan(&seqscan))
	require.Equal(t, "off", seqscan, "the store's connections prefer indexes (postgresDSN)")
	require.Greater(t, len(captured), 20)
	for _, st := range captured {
		if strings.HasPrefix(strings.TrimSpace(st.sql), "ANALYZE") {
			continue
		}
		scans := seqScans(ctx, t, conn, st)
		require.Empty(t, scans, "sequential scan in the plan of:\n%s", st.sql)
	}
}

// TestGroupStatementsUseIndexesOnANewTable checks the plans of the group statements on a new,
// empty, never analyzed database, as a fresh deployment's first commits make them: the planner
// then takes every table for ten pages, and without the store's session setting it planned the
// group update's read of its jobs as a scan of the whole table, a plan each connection kept while
// the table grew (session 12).
func TestGroupStatementsUseIndexesOnANewTable(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	conn := theConnection(ctx, t, openOneConnection(ctx, t))
	// The plan a connection keeps for a statement it runs again and again is the generic one, made
	// without the arguments' values.
	_, err := conn.ExecContext(ctx, "SET plan_cache_mode = force_generic_plan")
	require.NoError(t, err)

	now := time.Now()
	id := uuid.NewString()
	job := &store.Job{ID: id, FeatureName: "plan", Status: store.JobRunning, Input: json.RawMessage(`{}`), CreatedAt: now, UpdatedAt: now}
	update := &store.Change{Job: job, Version: 1, Steps: []store.StepChange{{
		Step:   store.Step{JobID: id, Name: "s1", Status: store.StepRunning, Run: 1, UpdatedAt: now},
		Expect: store.StepExpect{Status: store.StepQueued, Run: 1}}}}
	create := &store.Change{Create: true, Job: job, Steps: []store.StepChange{{
		Step: store.Step{JobID: id, Name: "s1", Status: store.StepQueued, Run: 1, CreatedAt: now, UpdatedAt: now}}}}
	for i, c := range []*store.Change{update, create} {
		require.NoError(t, normalizeChange(c))
		query, args := groupStatement([]*store.Change{c})
		name := fmt.Sprintf("cao_plan_%d", i)
		_, err := conn.ExecContext(ctx, "PREPARE "+name+" AS "+query)
		require.NoError(t, err)
		nulls := strings.TrimSuffix(strings.Repeat("NULL, ", len(args)), ", ")
		require.Empty(t, seqScans(ctx, t, conn, statement{sql: "EXECUTE " + name + "(" + nulls + ")"}),
			"sequential scan in the generic plan of:\n%s", query)
	}
}

// openOneConnection migrates a new Postgres schema and opens a store on it with a pool of one
// connection, so that every statement, and every EXPLAIN of theConnection, runs in one session.
func openOneConnection(ctx context.Context, t *testing.T) *Store {
	t.Helper()
	url := testinfra.PostgresSchema(t)
	require.NoError(t, migrate.Up(ctx, "postgres", url))
	s, err := OpenPostgres(ctx, url, Config{MaxOpenConns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// theConnection holds the store's one connection until the test ends.
func theConnection(ctx context.Context, t *testing.T, s *Store) *sql.Conn {
	t.Helper()
	sqlDB, err := s.db.DB()
	require.NoError(t, err)
	conn, err := sqlDB.Conn(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// seqScans returns the relations the plan of st reads with a sequential scan.
func seqScans(ctx context.Context, t *testing.T, conn *sql.Conn, st statement) []string {
	t.Helper()
	var plan string
	require.NoError(t, conn.QueryRowContext(ctx, "EXPLAIN (FORMAT JSON) "+st.sql, st.vars...).Scan(&plan), st.sql)
	var doc []map[string]any
	require.NoError(t, json.Unmarshal([]byte(plan), &doc))
	var out []string
	var walk func(n map[string]any)
	walk = func(n map[string]any) {
		if n["Node Type"] == "Seq Scan" {
			out = append(out, fmt.Sprint(n["Relation Name"]))
		}
		children, _ := n["Plans"].([]any)
		for _, c := range children {
			if m, ok := c.(map[string]any); ok {
				walk(m)
			}
		}
	}
	for _, d := range doc {
		if p, ok := d["Plan"].(map[string]any); ok {
			walk(p)
		}
	}
	return out
}

// seedPlans stores 300 finished jobs of 5 steps (attempts, events, inputs) and a few active ones,
// and returns their ids.
func seedPlans(ctx context.Context, t *testing.T, s *Store) []string {
	t.Helper()
	base := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Microsecond)
	var ids []string
	for i := range 300 {
		at := base.Add(time.Duration(i) * time.Minute)
		status := store.JobCompleted
		if i%50 == 0 {
			status = store.JobRunning
		}
		j := &store.Job{ID: uuid.NewString(), FeatureName: "plan", Status: status, Input: json.RawMessage(`{}`),
			InputVersion: 1, CreatedAt: at, UpdatedAt: at}
		if status == store.JobCompleted {
			j.FinishedAt = &at
		}
		c := &store.Change{Job: j, Create: true, Inputs: []store.JobInput{{Version: 1, Input: j.Input, CreatedAt: at}}}
		for k := range 5 {
			name := fmt.Sprintf("s%d", k+1)
			st := store.Step{JobID: j.ID, Name: name, Position: k, Service: "sim", Queue: "default",
				Status: store.StepSucceeded, Run: 1, Attempts: 1, Output: json.RawMessage(`{"ok":true}`), CreatedAt: at, UpdatedAt: at}
			if status == store.JobRunning && k == 0 {
				st.Status, st.LeaseOwner, st.LeaseExpiresAt = store.StepRunning, "w", &at
			}
			c.Steps = append(c.Steps, store.StepChange{Step: st})
			c.Attempts = append(c.Attempts, store.Attempt{Step: name, Run: 1, Attempt: 1, WorkerID: "w", Status: store.AttemptSucceeded, StartedAt: at})
			for e := range 3 {
				j.LastSeq++
				c.Events = append(c.Events, store.Event{Seq: j.LastSeq, Type: store.EventStep, Step: name, Status: fmt.Sprint(e), At: at})
			}
		}
		require.NoError(t, s.Apply(ctx, c))
		ids = append(ids, j.ID)
	}
	return ids
}

package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/store"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Warm opens n of the pool's connections (at most its size) ahead of the first requests and, on
// Postgres, prepares the hot path's statements on each (by their text, so every later use of a
// statement on that connection runs the prepared one). A new Postgres connection costs a backend
// start, and its first statements load the catalog entries of every table and index they touch:
// tens of milliseconds each on a busy server, which would otherwise fall on the first steps after a
// process starts (a slot of a capped service stays idle meanwhile). Connections beyond n open as
// needed, as before. SQLite, in-process, has nothing to warm.
func (s *Store) Warm(ctx context.Context, n int) error {
	p, ok := s.hot.(postgresHot)
	if !ok {
		return nil
	}
	// Every connection is held until all are warm: more than the pool holds would wait for ever.
	if limit := p.db.Stats().MaxOpenConnections; limit > 0 {
		n = min(n, limit)
	}
	if n <= 0 {
		return nil
	}
	return p.warm(ctx, n)
}

// hotStatements are the statements every step and every POST runs through.
var hotStatements = []string{pgLoadJob, pgApplyUpdate, pgApplyCreate, pgGroupUpdate, pgGroupCreate}

func (p postgresHot) warm(ctx context.Context, n int) error {
	// Every connection is held until all are warm, so that each is a distinct one.
	type warmed struct {
		c   *sql.Conn
		err error
	}
	done := make(chan warmed, n)
	for range n {
		go func() {
			c, err := p.warmOne(ctx)
			done <- warmed{c, err}
		}()
	}
	var errs []error
	for range n {
		w := <-done
		if w.c != nil {
			defer w.c.Close() // gives it back to the pool
		}
		errs = append(errs, w.err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("warm the database pool: %w", interpretError(err))
	}
	return nil
}

// warmOne takes a connection of the pool and prepares the hot statements on it; the caller gives
// the connection back (also after an error).
func (p postgresHot) warmOne(ctx context.Context) (*sql.Conn, error) {
	c, err := p.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return c, c.Raw(func(driverConn any) error {
		dc, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", driverConn)
		}
		for _, q := range hotStatements {
			if _, err := dc.Conn().Prepare(ctx, q, q); err != nil {
				return err
			}
		}
		return rehearse(ctx, dc.Conn())
	})
}

// rehearse runs every hot statement once on c, in a transaction it rolls back: jobs created alone
// and in a group, their steps claimed alone and in a group (attempts, events, inputs and outbox
// tasks written), one read back. Nothing of it stays; outbox ids it drew are skipped. Preparing a
// statement only parses it. Its first run also plans it and loads into the backend's caches every
// table, index and statistic the plan touches: the first claims of a capped service's steps took
// 25-65 ms each on a busy server instead of 2-3, while their slots sat idle (session 14).
func rehearse(ctx context.Context, c *pgx.Conn) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	ids := [3]string{uuid.NewString(), uuid.NewString(), uuid.NewString()}
	runs := [][]*store.Change{
		{rehearsalCreate(ids[0])}, {rehearsalCreate(ids[1]), rehearsalCreate(ids[2])},
		{rehearsalClaim(ids[0])}, {rehearsalClaim(ids[1]), rehearsalClaim(ids[2])},
	}
	for _, changes := range runs {
		var (
			query string
			args  []any
		)
		for _, ch := range changes {
			if err := normalizeChange(ch); err != nil {
				return fmt.Errorf("rehearse: %w", err)
			}
		}
		if len(changes) == 1 {
			query, args = postgresHot{}.statement(changes[0])
		} else {
			query, args = groupStatement(changes)
		}
		if err := drain(tx.Query(ctx, query, args...)); err != nil {
			return fmt.Errorf("rehearse: %w", err)
		}
	}
	if err := drain(tx.Query(ctx, pgLoadJob, pgUUID(ids[0]))); err != nil {
		return fmt.Errorf("rehearse: %w", err)
	}
	return nil
}

// drain reads rows to their end and returns the first error.
func drain(rows pgx.Rows, err error) error {
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// rehearsalCreate is the change that creates a one-step job with the given id, as a POST makes it.
func rehearsalCreate(id string) *store.Change {
	now := time.Now()
	step := store.Step{Name: "rehearsal", Service: "rehearsal", Queue: "default", Status: store.StepQueued, Run: 1,
		CreatedAt: now, UpdatedAt: now}
	return &store.Change{
		Job: &store.Job{ID: id, Tenant: "rehearsal", FeatureName: "rehearsal", Status: store.JobPending,
			Input: json.RawMessage(`{}`), InputVersion: 1, LastSeq: 2, CreatedAt: now, UpdatedAt: now},
		Create: true,
		Steps:  []store.StepChange{{Step: step}},
		Inputs: []store.JobInput{{Version: 1, Input: json.RawMessage(`{}`)}},
		Events: []store.Event{
			{Seq: 1, Type: store.EventJob, Status: string(store.JobPending), At: now},
			{Seq: 2, Type: store.EventStep, Step: step.Name, Status: string(store.StepQueued), Run: 1, At: now},
		},
		Outbox: []store.OutboxTask{{TaskID: "rehearsal:" + id, Queue: "default", TypeName: "rehearsal", Payload: []byte(`{}`)}},
	}
}

// rehearsalClaim is the change that claims the step of rehearsalCreate's job, as a worker makes it.
func rehearsalClaim(id string) *store.Change {
	now := time.Now()
	lease := now.Add(time.Minute)
	step := store.Step{Name: "rehearsal", Service: "rehearsal", Queue: "default", Status: store.StepRunning, Run: 1,
		Attempts: 1, LeaseOwner: "rehearsal", LeaseExpiresAt: &lease, CreatedAt: now, UpdatedAt: now, StartedAt: &now}
	return &store.Change{
		Job: &store.Job{ID: id, Tenant: "rehearsal", FeatureName: "rehearsal", Status: store.JobRunning,
			Input: json.RawMessage(`{}`), InputVersion: 1, LastSeq: 4, CreatedAt: now, UpdatedAt: now, StartedAt: &now},
		Version:  1,
		Steps:    []store.StepChange{{Step: step, Expect: store.StepExpect{Status: store.StepQueued, Run: 1}}},
		Attempts: []store.Attempt{{Step: step.Name, Run: 1, Attempt: 1, WorkerID: "rehearsal", Status: store.AttemptRunning, StartedAt: now}},
		Events: []store.Event{
			{Seq: 3, Type: store.EventJob, Status: string(store.JobRunning), At: now},
			{Seq: 4, Type: store.EventStep, Step: step.Name, Status: string(store.StepRunning), Attempt: 1, Run: 1, At: now},
		},
	}
}

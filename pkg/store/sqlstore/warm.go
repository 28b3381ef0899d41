package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

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
		return nil
	})
}

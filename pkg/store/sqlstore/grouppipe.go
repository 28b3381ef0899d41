package sqlstore

import (
	"cmp"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/cao-run/cao/pkg/store"
)

// A pipelined committer (session 17). One statement after another, the connection's backend sat
// idle for 0.7-1.2 ms of every 3.7-4.7 ms group update while the committer encoded and sent the next
// group and read and handed out the last one's answer: a one-worker run is paced by its committer.
// A committer that keeps a connection for as long as changes are queued sends the next group while
// the last one executes (Postgres's pipeline mode: each group its own implicit transaction, ended by
// its own Sync), so the backend goes from one group to the next without waiting for the client. It
// is still one statement at a time on the server: several at once cost Postgres more than they save
// (docs/benchmarks.md, sessions 15 and 17). Each group keeps its outcome as alone: an error of one
// group's statement (a step's compare-and-set) ends that group only, whose changes are then applied
// one by one on other connections of the pool.
//
// A group never holds a change of a job whose earlier change is still in the pipeline (take's busy):
// it was computed from the state that change leaves, and that change may yet be refused. A single
// change is not pipelined: found alone, it is written by the single-change statement as before.

const (
	// pipelineDepth is how many groups a committer keeps in the pipeline: the one executing and the
	// next.
	pipelineDepth = 2
	// minPipelinePool is the smallest pool a committer takes a connection of its own from: the
	// loads, the single changes and a failed group's one-by-one fallback need the others.
	minPipelinePool = 4
)

// pipelines reports whether this store's committers keep a connection of their own.
func (g *groupCommitter) pipelines() bool {
	return g.p.db.Stats().MaxOpenConnections >= minPipelinePool
}

// inflightGroup is a group whose statement is in the pipeline.
type inflightGroup struct {
	group   []*pendingChange
	changes []*store.Change
	start   time.Time
}

// pipeLoop runs the committer's loop on a connection it holds, pipelined, and reports whether it
// ended because nothing is left to write (it has then stopped counting itself as running). It
// returns false without having written anything when it cannot start (no connection, the
// statements cannot be prepared), and false once the connection failed (the groups it held answered
// as unknown): the caller writes what is still queued one statement after another.
func (g *groupCommitter) pipeLoop() bool {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	conn, err := g.p.db.Conn(ctx)
	cancel()
	if err != nil {
		return false
	}
	defer func() { _ = conn.Close() }()
	drained := false
	_ = conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		pc := sc.Conn()
		ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
		upd, err := pc.Prepare(ctx, pgGroupUpdate, pgGroupUpdate) // the description Warm prepared, if it did
		if err == nil {
			var crt *pgconn.StatementDescription
			if crt, err = pc.Prepare(ctx, pgGroupCreate, pgGroupCreate); err == nil {
				cancel()
				drained, err = g.pipeRun(pc, upd, crt)
			}
		}
		cancel()
		if err != nil && pc.IsClosed() {
			return driver.ErrBadConn // not given back to the pool
		}
		return err
	})
	return drained
}

// pipeRun writes what is queued through a pipeline on pc, until nothing is (drained) or the
// connection fails (err).
func (g *groupCommitter) pipeRun(pc *pgx.Conn, upd, crt *pgconn.StatementDescription) (drained bool, err error) {
	// The pipeline's context ends when a group has waited groupTimeout for its answer: its
	// connection is then closed, as a statement's would be when its own deadline passed.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchdog := time.AfterFunc(groupTimeout, cancel) // runs only while a group is in the pipeline
	watchdog.Stop()
	defer watchdog.Stop()
	pl := pc.PgConn().StartPipeline(ctx)
	defer func() {
		if cerr := pl.Close(); err == nil && cerr != nil && !isPgError(cerr) {
			err = cerr
		}
	}()
	var (
		pending []inflightGroup
		busy    = map[string]bool{}
	)
	for {
		g.mu.Lock()
		now := time.Now()
		var group []*pendingChange
		if len(pending) < pipelineDepth {
			// With a group in the pipeline, one change alone waits for it: a change alone is
			// written by the single-change statement.
			group = g.take(busy, 1+min(len(pending), 1))
		}
		if len(group) == 0 && len(pending) == 0 {
			g.running--
			g.mu.Unlock()
			return true, nil
		}
		if len(group) > 0 {
			g.moved = now
		}
		g.mu.Unlock()

		if len(group) == 1 {
			g.commit(group) // nothing in the pipeline: as before
			continue
		}
		if len(group) > 0 {
			ig := inflightGroup{group: group, changes: make([]*store.Change, len(group)), start: now}
			for i, pc := range group {
				ig.changes[i] = pc.c
			}
			if err := sendGroup(pl, pc.TypeMap(), upd, crt, ig.changes); err != nil {
				if errors.Is(err, errEncode) {
					g.settle(group, nil, err) // nothing sent: one by one, each change gets its own error
					continue
				}
				g.settle(group, nil, connFailed(err))
				return false, g.fail(pending, err)
			}
			for _, c := range ig.changes {
				busy[c.Job.ID] = true
			}
			if len(pending) == 0 {
				watchdog.Reset(groupTimeout)
			}
			pending = append(pending, ig)
			if len(pending) < pipelineDepth {
				continue // take the next group while this one executes
			}
		}

		// The oldest group's answer.
		ig := pending[0]
		pending = pending[1:]
		written, ids, err := readGroup(pl)
		for _, c := range ig.changes {
			delete(busy, c.Job.ID)
		}
		if err != nil && !isPgError(err) {
			g.settle(ig.group, nil, connFailed(err))
			return false, g.fail(pending, err)
		}
		if len(pending) == 0 {
			watchdog.Stop()
		} else {
			watchdog.Reset(groupTimeout)
		}
		var errs []error
		if err == nil {
			errs, err = groupOutcome(ig.changes, written, ids)
		}
		g.settle(ig.group, errs, err)
		g.mu.Lock()
		g.moved = time.Now()
		g.mean += (time.Since(ig.start) - g.mean) / 8
		g.mu.Unlock()
	}
}

// fail answers the groups still in the pipeline of a connection that failed with err, and returns
// err.
func (g *groupCommitter) fail(pending []inflightGroup, err error) error {
	for _, ig := range pending {
		g.settle(ig.group, nil, connFailed(err))
	}
	return err
}

// connFailed is err, a failure of the connection itself: whether the groups it carried were
// written is unknown.
func connFailed(err error) error {
	if errors.Is(interpretError(err), store.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// errEncode marks a group whose arguments could not be encoded: nothing was sent.
var errEncode = errors.New("encode the group's arguments")

// sendGroup encodes changes' group statement (upd or crt) and sends it into pl, with the Sync that
// ends its transaction.
func sendGroup(pl *pgconn.Pipeline, m *pgtype.Map, upd, crt *pgconn.StatementDescription, changes []*store.Change) error {
	query, args := groupStatement(changes)
	sd := upd
	if query == pgGroupCreate {
		sd = crt
	}
	params, err := encodeParams(m, sd, args)
	if err != nil {
		return fmt.Errorf("%w: %w", errEncode, err)
	}
	pl.SendQueryStatement(sd, params, []int16{pgtype.BinaryFormatCode}, []int16{pgtype.TextFormatCode})
	pl.SendPipelineSync()
	return pl.Flush()
}

// encodeParams encodes args, in binary, as the parameters sd describes.
func encodeParams(m *pgtype.Map, sd *pgconn.StatementDescription, args []any) ([][]byte, error) {
	if len(args) != len(sd.ParamOIDs) {
		return nil, fmt.Errorf("%d arguments for %d parameters", len(args), len(sd.ParamOIDs))
	}
	out := make([][]byte, len(args))
	var buf []byte
	for i, a := range args {
		start := len(buf)
		b, err := m.Encode(sd.ParamOIDs[i], pgtype.BinaryFormatCode, a, buf)
		if err != nil {
			return nil, fmt.Errorf("parameter %d: %w", i+1, err)
		}
		if b == nil {
			continue // NULL
		}
		buf = b
		out[i] = buf[start:len(buf):len(buf)] // a later append that moves buf leaves this one intact
	}
	return out, nil
}

// readGroup reads the answer of the oldest group statement in pl and the Sync after it: the
// statement's row (the jobs written, the outbox ids), or its error (a *pgconn.PgError: the
// connection is fine and the next group runs), or the connection's.
func readGroup(pl *pgconn.Pipeline) (written, ids string, err error) {
	res, err := pl.GetResults() // on an error, res may be a nil *ResultReader
	if err == nil {
		rr, ok := res.(*pgconn.ResultReader)
		if !ok || rr == nil {
			return "", "", fmt.Errorf("pipeline: unexpected %T for a group statement", res)
		}
		for rr.NextRow() {
			if v := rr.Values(); len(v) == 3 {
				written, ids = string(v[0]), string(v[2])
			}
		}
		_, err = rr.Close()
	}
	if err != nil && !isPgError(err) {
		return "", "", err
	}
	stmtErr := err
	for {
		res, err := pl.GetResults()
		switch {
		case err != nil && !isPgError(err):
			return "", "", err
		case err != nil:
			stmtErr = cmp.Or(stmtErr, err)
		case res == nil:
			return "", "", errors.New("pipeline: no Sync after a group statement")
		}
		if _, ok := res.(*pgconn.PipelineSync); ok {
			return written, ids, stmtErr
		}
	}
}

func isPgError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}

package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cao-run/cao/pkg/store"
)

// Group commit on Postgres: changes of different jobs that arrive while earlier ones are being
// written share one statement, and so one commit, one plan and one executor start-up, which are most
// of what a small change costs the server. A change waits for nothing: a committer takes whatever
// is queued when it is free, and a change that finds a committer free is written at once, alone,
// by the single-change statement. A process runs one committer, and more only while the running
// ones are stalled (no statement began or ended for far longer than statements take now, e.g. one
// waits for a row lock): one committer makes the largest groups, and several processes' committers
// (each worker's, each API replica's) do not crowd the database's few cores with statements that
// wait for each other. A busy database slows every statement; the stall limit follows (stallLimit),
// so that slowness does not start more committers, whose statements would only slow it more. Each
// change keeps its own compare-and-set: a job whose version moved on is refused (store.ErrConflict)
// without writing any of its rows, and the others commit.

const (
	// maxCommitters is how many group commits may run at once, each on one pooled connection (at
	// most half the pool, so reads are never starved by writes).
	maxCommitters = 4
	// How long the running committers may go without beginning or ending a statement before a
	// change that arrives starts another committer: stallFactor times the recent mean time of a
	// statement, within [minStall, maxStall].
	minStall    = 100 * time.Millisecond
	maxStall    = 500 * time.Millisecond
	stallFactor = 8
	// maxGroup caps the changes of one statement.
	maxGroup = 64
	// groupTimeout bounds one group's statement: its changes' callers may have no deadline.
	groupTimeout = 30 * time.Second
)

// A group statement applies the changes of several distinct jobs, all updates or all creates
// (pgGroupUpdate, pgGroupCreate). Its parameters are row sets (pgcolumns.go), in this order: the job
// rows, the steps, then applyTail's (attempts, inputs, events, outbox), every row naming its job. A
// job's rows are written only if its own row was (its id is in jb): an update whose job's version
// moved on, or a create whose job exists already, writes nothing. The statement returns the ids of
// the jobs written and the outbox ids assigned (ascending, in the order of the tasks' n). An update
// raises cao_conflict when a step's compare-and-set failed after its job's succeeded (nothing is
// then written; the caller applies the changes one by one to find which). Updated jobs are found by
// their primary key (= ANY of the ids): a join with the rows alone may be planned as a scan of the
// whole table.
var pgGroupUpdate = func() string {
	p := &pgParams{}
	return `WITH jv AS (
	SELECT id, exp_version, n_steps, status, input, input_version, output, error, last_seq, stuck_at, stuck_reason,
		updated_at, started_at, finished_at
	FROM ` + pgJobUpdateRows.from("jv", p) + `),
jb AS (
	UPDATE jobs j SET status = jv.status, input = jv.input, input_version = jv.input_version, output = jv.output,
		error = jv.error, last_seq = jv.last_seq, stuck_at = jv.stuck_at, stuck_reason = jv.stuck_reason,
		updated_at = jv.updated_at, started_at = jv.started_at, finished_at = jv.finished_at, version = j.version + 1
	FROM jv WHERE j.id = ANY (ARRAY(SELECT jv.id FROM jv)) AND j.id = jv.id AND j.version = jv.exp_version
	RETURNING j.id),
st AS (
	` + stepUpdate + `
	FROM ` + pgStepUpdateRows.from("v", p) + `
	WHERE ` + stepMatch + ` AND v.job_id IN (SELECT id FROM jb)
	RETURNING 1)` + applyTail(p, true) + `
SELECT (SELECT coalesce(string_agg(id::text, ','), '') FROM jb),
	CASE WHEN (SELECT count(*) FROM st) = (SELECT coalesce(sum(jv.n_steps), 0) FROM jv WHERE jv.id IN (SELECT id FROM jb))
		THEN true ELSE cao_conflict('step') END,
	(SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ob)`
}()

var pgGroupCreate = func() string {
	p := &pgParams{}
	return `WITH jb AS (
	INSERT INTO jobs (id, feature_name, status, input, input_version, output, error, last_seq, stuck_at, stuck_reason,
		created_at, updated_at, started_at, finished_at, version, tenant, webhook_url)
	SELECT v.id, v.feature_name, v.status, v.input, v.input_version, v.output, v.error, v.last_seq, v.stuck_at,
		v.stuck_reason, v.created_at, v.updated_at, v.started_at, v.finished_at, 1, v.tenant, v.webhook_url
	FROM ` + pgJobCreateRows.from("v", p) + `
	ON CONFLICT (id) DO NOTHING
	RETURNING id),
st AS (
	` + stepInsert + `
	FROM ` + pgStepCreateRows.from("v", p) + `
	WHERE v.job_id IN (SELECT id FROM jb)
	RETURNING 1)` + applyTail(p, true) + `
SELECT (SELECT coalesce(string_agg(id::text, ','), '') FROM jb), (SELECT count(*) FROM st) >= 0,
	(SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ob)`
}()

// pgJobIn is a job row of a group commit: the row as the change leaves it and, for an update, the
// version it expects and how many of its steps it updates.
type pgJobIn struct {
	ID           string
	ExpVersion   int64
	FeatureName  string
	CreatedAt    time.Time
	Tenant       string
	WebhookURL   *string
	Status       string
	Input        string // JSON
	InputVersion int
	Output       *string // JSON or NULL
	Error        string
	LastSeq      int64
	StuckAt      *time.Time
	StuckReason  string
	UpdatedAt    time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
	NSteps       int
}

// The columns of the job rows: the fields an update writes (with the version it expects and its
// number of steps), and the whole row of a new job.
var (
	pgJobUpdateRows = slices.Concat(pgRowSet[pgJobIn]{
		pgCol("id", "uuid", func(j *pgJobIn) string { return j.ID }),
		pgCol("exp_version", "bigint", func(j *pgJobIn) int64 { return j.ExpVersion }),
		pgCol("n_steps", "int", func(j *pgJobIn) int { return j.NSteps }),
	}, pgJobFields)
	pgJobCreateRows = slices.Concat(pgRowSet[pgJobIn]{
		pgCol("id", "uuid", func(j *pgJobIn) string { return j.ID }),
		pgCol("feature_name", "text", func(j *pgJobIn) string { return j.FeatureName }),
		pgCol("created_at", "timestamptz", func(j *pgJobIn) time.Time { return j.CreatedAt }),
		pgCol("tenant", "text", func(j *pgJobIn) string { return j.Tenant }),
		pgCol("webhook_url", "text", func(j *pgJobIn) *string { return j.WebhookURL }),
	}, pgJobFields)
	// pgJobFields are the columns both shapes share, after their own.
	pgJobFields = pgRowSet[pgJobIn]{
		pgCol("status", "text", func(j *pgJobIn) string { return j.Status }),
		pgCol("input", "jsonb", func(j *pgJobIn) string { return j.Input }),
		pgCol("input_version", "int", func(j *pgJobIn) int { return j.InputVersion }),
		pgCol("output", "jsonb", func(j *pgJobIn) *string { return j.Output }),
		pgCol("error", "text", func(j *pgJobIn) string { return j.Error }),
		pgCol("last_seq", "bigint", func(j *pgJobIn) int64 { return j.LastSeq }),
		pgCol("stuck_at", "timestamptz", func(j *pgJobIn) *time.Time { return j.StuckAt }),
		pgCol("stuck_reason", "text", func(j *pgJobIn) string { return j.StuckReason }),
		pgCol("updated_at", "timestamptz", func(j *pgJobIn) time.Time { return j.UpdatedAt }),
		pgCol("started_at", "timestamptz", func(j *pgJobIn) *time.Time { return j.StartedAt }),
		pgCol("finished_at", "timestamptz", func(j *pgJobIn) *time.Time { return j.FinishedAt }),
	}
)

// groupable reports whether c may share a statement with other changes: an update without webhook
// deliveries, or a create without an idempotency key (a key's binding, and the changes that end a
// job with a webhook, have statements of their own), unless it is urgent (it would wait for the
// group being written). A group is all creates or all updates.
func groupable(c *store.Change) bool {
	switch {
	case c.Urgent:
		return false
	case c.Create:
		return c.IdempotencyKey == ""
	}
	return len(c.Webhooks) == 0
}

// pendingChange is a change waiting for its group commit, and where its outcome goes.
type pendingChange struct {
	ctx  context.Context
	c    *store.Change
	done chan error
}

// groupCommitter queues changes and runs their group commits: one committer goroutine while there
// is something queued, up to maxCommitters while the running ones stall.
type groupCommitter struct {
	p        postgresHot
	mu       sync.Mutex
	queue    []*pendingChange
	running  int
	moved    time.Time     // when a committer last began or ended a statement
	mean     time.Duration // recent mean time of a statement (moving average)
	watching bool          // a check for stalled committers is due (watch)
}

// stallLimit is how long the running committers may go without beginning or ending a statement
// before they count as stalled. Called with mu.
func (g *groupCommitter) stallLimit() time.Duration {
	return min(max(stallFactor*g.mean, minStall), maxStall)
}

// needsCommitter reports whether a change just queued should start a committer: none runs, or
// the running ones are stalled and there is room for one more. Called with mu.
func (g *groupCommitter) needsCommitter(now time.Time) bool {
	return g.running == 0 || (g.running < maxCommitters && now.Sub(g.moved) > g.stallLimit())
}

// apply queues c and waits until it is written or refused, or until ctx ends. A change whose ctx
// ends while it is still queued is not written; one that a committer took already may be (its
// outcome is then unknown to the caller, as when a statement's connection fails after the commit).
func (g *groupCommitter) apply(ctx context.Context, c *store.Change) error {
	pc := &pendingChange{ctx: ctx, c: c, done: make(chan error, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, pc)
	g.startOrWatch(time.Now())
	g.mu.Unlock()
	select {
	case err := <-pc.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("apply change of job %s: %w", c.Job.ID, ctx.Err())
	}
}

// startOrWatch starts a committer when one is needed; otherwise, while changes wait and there is
// room for another committer, it makes sure the running ones are checked again once they could
// count as stalled. Called with mu.
func (g *groupCommitter) startOrWatch(now time.Time) {
	switch {
	case g.needsCommitter(now):
		g.running++
		g.moved = now
		go g.commitLoop()
	case !g.watching && g.running < maxCommitters:
		g.watching = true
		time.AfterFunc(max(g.moved.Add(g.stallLimit()).Sub(now), time.Millisecond)+time.Millisecond, g.watch)
	}
}

// watch checks, for the changes still queued, whether the running committers stalled.
func (g *groupCommitter) watch() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.watching = false
	if len(g.queue) > 0 {
		g.startOrWatch(time.Now())
	}
}

// commitLoop writes what is queued, a group at a time, until nothing is.
func (g *groupCommitter) commitLoop() {
	for {
		g.mu.Lock()
		start := time.Now()
		g.moved = start
		group := g.take()
		if len(group) == 0 {
			g.running--
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.commit(group)
		g.mu.Lock()
		g.mean += (time.Since(start) - g.mean) / 8
		g.mu.Unlock()
	}
}

// take removes from the queue, oldest first, up to maxGroup changes of distinct jobs (a job's later
// change waits for the next group: it was computed after the first, which it expects to be
// written), all creates or all updates as the oldest is, whose context has not ended; those whose
// context ended are answered with its error. Called with mu.
func (g *groupCommitter) take() []*pendingChange {
	var group []*pendingChange
	jobs := make(map[string]bool)
	rest := g.queue[:0]
	for _, pc := range g.queue {
		switch {
		case pc.ctx.Err() != nil:
			pc.done <- fmt.Errorf("apply change of job %s: %w", pc.c.Job.ID, pc.ctx.Err())
		case len(group) < maxGroup && !jobs[pc.c.Job.ID] && (len(group) == 0 || pc.c.Create == group[0].c.Create):
			jobs[pc.c.Job.ID] = true
			group = append(group, pc)
		default:
			rest = append(rest, pc)
		}
	}
	clear(g.queue[len(rest):])
	g.queue = rest
	return group
}

// commit writes a group: a change alone by the single-change statement; several by one group
// statement, or one by one if that statement failed (a step's compare-and-set, a row that cannot
// be stored: each change then gets the outcome it would have had alone).
func (g *groupCommitter) commit(group []*pendingChange) {
	if len(group) == 1 {
		// Alone: under its own context, as if it had never been queued.
		group[0].done <- g.p.applyOne(group[0].ctx, group[0].c)
		return
	}
	// Shared: no one change's context may cancel the others'.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(group[0].ctx), groupTimeout)
	defer cancel()
	changes := make([]*store.Change, len(group))
	for i, pc := range group {
		changes[i] = pc.c
	}
	errs, err := g.p.applyGroup(ctx, changes)
	if err != nil && errors.Is(interpretError(err), store.ErrUnavailable) {
		// The outcome is unknown, as for a change applied alone whose connection failed.
		for _, pc := range group {
			pc.done <- fmt.Errorf("apply change of job %s: %w", pc.c.Job.ID, interpretError(err))
		}
		return
	}
	if err != nil {
		// Nothing was written (a statement is atomic): a step's conflict, a row one change cannot
		// store, or a deadlock with another process's group over the same jobs (rare: both groups
		// must hold changes of the same two jobs; Postgres ends one after deadlock_timeout). Each
		// change is then applied alone, under its own context, and gets its own outcome.
		for _, pc := range group {
			pc.done <- g.p.applyOne(pc.ctx, pc.c)
		}
		return
	}
	for i, pc := range group {
		pc.done <- errs[i]
	}
}

// applyGroup writes changes (of distinct jobs, all updates or all creates) in one statement and
// returns each one's outcome: nil; for an update, store.ErrConflict when its job's version moved on;
// for a create, store.ErrDuplicate when its job exists. The error is the statement's own (a step's
// conflict: cao_conflict's error, with nothing written).
func (p postgresHot) applyGroup(ctx context.Context, changes []*store.Change) ([]error, error) {
	query, args := groupStatement(changes)
	var (
		written string
		ok      bool
		ids     string
	)
	if err := p.db.QueryRowContext(ctx, query, args...).Scan(&written, &ok, &ids); err != nil {
		return nil, err
	}
	done := make(map[string]bool, len(changes))
	for id := range strings.SplitSeq(written, ",") {
		if id != "" {
			done[id] = true
		}
	}
	outIDs, err := parseIDs(ids)
	if err != nil {
		return nil, err
	}
	errs := make([]error, len(changes))
	k := 0
	for i, c := range changes {
		switch {
		case !done[c.Job.ID] && c.Create:
			errs[i] = fmt.Errorf("apply change of job %s: insert: %w", c.Job.ID, store.ErrDuplicate)
			continue
		case !done[c.Job.ID]:
			errs[i] = fmt.Errorf("apply change of job %s at version %d: %w", c.Job.ID, c.Version, store.ErrConflict)
			continue
		}
		for t := range c.Outbox {
			if k >= len(outIDs) {
				return nil, fmt.Errorf("apply a group of %d changes: too few outbox ids (%d)", len(changes), len(outIDs))
			}
			c.Outbox[t].ID = outIDs[k]
			k++
		}
	}
	if k != len(outIDs) {
		return nil, fmt.Errorf("apply a group of %d changes: %d outbox ids for %d tasks", len(changes), len(outIDs), k)
	}
	return errs, nil
}

// groupStatement returns the SQL and arguments of the group statement that applies changes.
func groupStatement(changes []*store.Change) (string, []any) {
	jobs := make([]pgJobIn, 0, len(changes))
	all := sizedRows(changes)
	n := 0
	for _, c := range changes {
		j := c.Job
		row := jobToRow(j)
		jobs = append(jobs, pgJobIn{
			ID: j.ID, ExpVersion: c.Version, FeatureName: row.FeatureName, CreatedAt: row.CreatedAt, Tenant: row.Tenant,
			WebhookURL: row.WebhookURL, Status: row.Status, Input: string(row.Input), InputVersion: row.InputVersion,
			Output: optJSON(json.RawMessage(row.Output)), Error: row.Error, LastSeq: row.LastSeq, StuckAt: row.StuckAt,
			StuckReason: row.StuckReason, UpdatedAt: row.UpdatedAt, StartedAt: row.StartedAt, FinishedAt: row.FinishedAt,
			NSteps: len(c.Steps),
		})
		all.add(c, n)
		n += len(c.Outbox)
	}
	query, jobRows, stepRows := pgGroupUpdate, pgJobUpdateRows, pgStepUpdateRows
	if changes[0].Create {
		query, jobRows, stepRows = pgGroupCreate, pgJobCreateRows, pgStepCreateRows
	}
	args := make([]any, 0, 64)
	args = jobRows.args(args, jobs)
	args = stepRows.args(args, all.steps)
	return query, all.tailArgs(args)
}

// parseIDs parses a comma-separated list of ids ("" is none).
func parseIDs(s string) ([]int64, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	out := make([]int64, len(parts))
	for i, part := range parts {
		id, err := strconv.ParseInt(part, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("outbox id %q: %w", part, err)
		}
		out[i] = id
	}
	return out, nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Shape of the history scenario.
const (
	historyBase       = 100            // finished jobs on the small ("empty") database, so that GETs have targets
	historySamples    = 500            // sequential samples of each HTTP request, per series
	historyWSSamples  = 300            // sequential WebSocket snapshots, per series
	historyBlock      = 25             // requests to one API before the next series' turn
	historyWorkingSet = historyBase    // jobs the like-for-like series reads on the full database
	historySpan       = 24 * time.Hour // the seeded jobs' created_at spread (well inside CAO_RETENTION)
)

// historyOp is one request the history scenario times on both databases: run sends it to c's API
// (cl is a client of it) about job id.
type historyOp struct {
	name    string
	samples int
	perJob  bool // reads the job it is given (GET job, WebSocket); POST and the list ignore it
	run     func(ctx context.Context, c *cluster, cl *apiClient, id string) error
}

// runHistory checks that the hot requests do not slow down as finished jobs pile up: the p50 of
// POST, GET one job, GET the newest page of a filtered list and a WebSocket snapshot on a database
// of historyBase finished jobs and on one of -history-jobs, each job a clone (via COPY) of a real
// chain5 job with all its steps, attempts and events.
//
// Each database has an API process of its own (the small one's on the floor's Redis DB, which no
// floor uses in this scenario), and the requests alternate between them, so that the machine's
// drift over the minutes of a run weighs on both series alike. The requests that read one job (GET
// job, the snapshot) are timed twice on the full database. The like-for-like series reads
// historyWorkingSet jobs drawn at random from the whole history, each read once before timing, as
// the small database's series reads its historyBase jobs: what differs is only how much history
// the indexes and tables hold. The cold series reads a job drawn from the whole history on every
// request, so nearly every request is that job's first read and waits for pages the database has
// not cached (docs/benchmarks.md, session 18); it is reported beside the goal's row, against the
// same small-database series.
func runHistory(ctx context.Context, e *env) []row {
	n := e.opts.historyJobs
	progress("history: %d finished chain5 jobs vs %d", n, historyBase)
	res, err := historyRun(ctx, e)
	var rows []row
	for i, op := range historyOps {
		scenario := fmt.Sprintf("history: %s p50, %d finished jobs (%d rows each) vs %d", op.name, n, res.rowsPerJob, historyBase)
		if op.perJob {
			scenario = fmt.Sprintf("history: %s p50, %d of %d finished jobs (%d rows each), each read once before, vs %d",
				op.name, min(historyWorkingSet, n), n, res.rowsPerJob, historyBase)
		}
		if err != nil {
			rows = append(rows, errorRow("history", scenario, err))
			continue
		}
		rows = append(rows, historyRow(scenario, res.full[i], res.empty[i], 1.5))
		if op.perJob {
			scenario = fmt.Sprintf("history: %s p50, cold: a job of all %d drawn for each request, vs %d", op.name, n, historyBase)
			rows = append(rows, historyRow(scenario, res.cold[i], res.empty[i], 0))
		}
	}
	return rows
}

// historyOps are the requests the history scenario times, each sent to one cluster's API and, for
// perJob ones, about one job.
var historyOps = []historyOp{
	{"POST /api/v1/jobs", historySamples, false, func(ctx context.Context, c *cluster, cl *apiClient, _ string) error {
		_, err := cl.postJob(ctx, featureChain5)
		return err
	}},
	{"GET /api/v1/jobs/{id}", historySamples, true, func(ctx context.Context, c *cluster, cl *apiClient, id string) error {
		return cl.get(ctx, "/api/v1/jobs/"+id)
	}},
	{"GET /api/v1/jobs?status=COMPLETED&feature=chain5&limit=50", historySamples, false, func(ctx context.Context, c *cluster, cl *apiClient, _ string) error {
		return cl.get(ctx, "/api/v1/jobs?status=COMPLETED&feature="+featureChain5+"&limit=50")
	}},
	{"WebSocket /ws/{id} of a finished job: connect → snapshot", historyWSSamples, true, func(ctx context.Context, c *cluster, _ *apiClient, id string) error {
		return wsSnapshot(ctx, "ws://"+c.apiAddr+"/ws/"+id)
	}},
}

// historyRow is one request's row: its p50 and p99 on the full database against the small one's,
// and the goal: a ratio of the p50s at most bound, or none (0: reported only).
func historyRow(scenario string, full, empty []time.Duration, bound float64) row {
	f, e := float64(percentile(full, 50)), float64(percentile(empty, 50))
	goal := "reported (first reads of pages not in memory)"
	if bound > 0 {
		goal = fmt.Sprintf("≤ %g", bound) + verdict(within(f/e, bound))
	}
	return row{
		target: "history", scenario: scenario,
		cao:   fmt.Sprintf("p50 %s (p99 %s)", fmtDur(percentile(full, 50)), fmtDur(percentile(full, 99))),
		floor: fmt.Sprintf("p50 %s (p99 %s), %d jobs", fmtDur(percentile(empty, 50)), fmtDur(percentile(empty, 99)), historyBase),
		ratio: ratio(f, e),
		goal:  goal,
	}
}

// historyResult is the latencies of each op: on the small database, on the full one over a working
// set as large as the small one's, and on the full one over the whole history (cold; perJob ops only).
type historyResult struct {
	empty, full, cold [][]time.Duration
	rowsPerJob        int
}

// historyTarget is one series' API and the jobs its requests read.
type historyTarget struct {
	c   *cluster
	cl  *apiClient
	ids []uuid.UUID
	out [][]time.Duration // per op
}

// historyRun runs one real chain5 job on the bench database as the template; seeds -history-jobs
// clones of it there and historyBase clones in a second, new database with its own API; and times
// every op on both, alternating.
func historyRun(ctx context.Context, e *env) (historyResult, error) {
	var res historyResult
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML("", 0), workers: 1, concurrency: chainConcurrency})
	if err != nil {
		return res, err
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	job, err := cl.postJob(ctx, featureChain5)
	if err != nil {
		return res, err
	}
	if _, err := c.waitCompleted(ctx, 1, time.Minute); err != nil {
		return res, fmt.Errorf("template job: %w", err)
	}
	// No worker from here on: the measured POSTs stay PENDING and add no background work.
	for _, w := range c.workers {
		w.stop(5 * time.Second)
	}
	c.workers = nil
	tmpl, err := loadTemplate(ctx, e.db, job.JobID)
	if err != nil {
		return res, err
	}
	res.rowsPerJob = tmpl.rowCount()
	progress("  template job %s: %d rows", job.JobID, res.rowsPerJob)

	small, smallDB, err := startSmallCluster(ctx, e)
	if small != nil {
		defer small.stop()
	}
	if smallDB != nil {
		defer smallDB.Close()
	}
	if err != nil {
		return res, err
	}
	base, err := seedClones(ctx, smallDB, tmpl, historyBase, time.Now().Add(-time.Second), 100*time.Millisecond)
	if err != nil {
		return res, err
	}
	if err := settle(ctx, smallDB); err != nil {
		return res, err
	}

	n := e.opts.historyJobs
	progress("  seeding %d jobs (%d rows)", n, n*res.rowsPerJob)
	began := time.Now()
	seeded, err := seedClones(ctx, e.db, tmpl, n, time.Now().Add(-time.Minute), historySpan/time.Duration(n))
	if err != nil {
		return res, err
	}
	if err := settle(ctx, e.db); err != nil {
		return res, err
	}
	progress("  seeded in %s", time.Since(began).Round(time.Second))

	set := make([]uuid.UUID, min(historyWorkingSet, len(seeded)))
	for i, k := range rand.Perm(len(seeded))[:len(set)] {
		set[i] = seeded[k]
	}
	smallCl := small.client()
	defer smallCl.close()
	targets := []*historyTarget{
		{c: small, cl: smallCl, ids: base},
		{c: c, cl: cl, ids: set},
		{c: c, cl: cl, ids: seeded}, // cold: perJob ops only, never warmed
	}
	if err := timeOps(ctx, targets); err != nil {
		return res, err
	}
	res.empty, res.full, res.cold = targets[0].out, targets[1].out, targets[2].out
	return res, nil
}

// startSmallCluster creates the small database (the bench database's name + "_small"), flushes the
// floor's Redis DB and starts an API over both, which migrates the database. It returns the API and
// a pool on the database.
func startSmallCluster(ctx context.Context, e *env) (*cluster, *pgxpool.Pool, error) {
	u, err := url.Parse(e.opts.pg)
	if err != nil || u.Scheme == "" || strings.Trim(u.Path, "/") == "" {
		return nil, nil, fmt.Errorf("-pg %s: the history scenario needs a postgres:// URL naming a database", redactURL(e.opts.pg))
	}
	u.Path = "/" + strings.Trim(u.Path, "/") + "_small"
	small := u.String()
	if err := recreateDatabase(ctx, small); err != nil {
		return nil, nil, err
	}
	rdb, err := floorRedis(ctx, e.opts, 0)
	if err != nil {
		return nil, nil, err
	}
	_ = rdb.Close()
	c, err := e.startCluster(ctx, clusterSpec{
		registry: registryYAML("", 0), database: small,
		redisURL: fmt.Sprintf("redis://%s/%d", e.opts.redisAddr, e.opts.floorRedisDB),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("the small database's API: %w", err)
	}
	db, err := pgxpool.New(ctx, small)
	if err != nil {
		return c, nil, err
	}
	return c, db, nil
}

// timeOps times each op on every target (target 2, the cold one, only perJob ops), alternating
// between them in blocks of historyBlock requests in a rotating order, each request on a random job
// of the target's ids. Each block follows one unmeasured request to the same API (whose process was
// idle during the other targets' blocks). The first two targets' jobs are each read once by every
// perJob op before its timing.
func timeOps(ctx context.Context, targets []*historyTarget) error {
	for _, t := range targets {
		t.out = make([][]time.Duration, len(historyOps))
	}
	for i, op := range historyOps {
		in := targets[:2]
		if op.perJob {
			in = targets
			for _, t := range targets[:2] {
				for _, id := range t.ids {
					if err := op.run(ctx, t.c, t.cl, id.String()); err != nil {
						return fmt.Errorf("%s: %w", op.name, err)
					}
				}
			}
		}
		for k := 0; len(in[0].out[i]) < op.samples; k++ {
			for j := range in {
				t := in[(k+j)%len(in)]
				for r := range 1 + min(historyBlock, op.samples-len(t.out[i])) {
					id := t.ids[rand.IntN(len(t.ids))].String()
					t0 := time.Now()
					if err := op.run(ctx, t.c, t.cl, id); err != nil {
						return fmt.Errorf("%s: %w", op.name, err)
					}
					if r > 0 {
						t.out[i] = append(t.out[i], time.Since(t0))
					}
				}
			}
		}
		progress("  %s: p50 %s on %d jobs, %s with history", op.name,
			fmtDur(percentile(targets[0].out[i], 50)), historyBase, fmtDur(percentile(targets[1].out[i], 50)))
	}
	return nil
}

// wsSnapshot connects to a job's WebSocket and reads until the snapshot message.
func wsSnapshot(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	defer func() { _ = conn.CloseNow() }()
	conn.SetReadLimit(1 << 22)
	_, data, err := conn.Read(ctx)
	if err != nil {
		return err
	}
	var m wsMessage
	if err := json.Unmarshal(data, &m); err != nil || m.Type != "snapshot" {
		return fmt.Errorf("first message is not a snapshot: %.200s", data)
	}
	return nil
}

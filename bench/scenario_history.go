package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
)

// Shape of the history scenario.
const (
	historyBase       = 100            // finished jobs on the "empty" database, so that GETs have targets
	historySamples    = 500            // sequential samples of each HTTP request
	historyWSSamples  = 300            // sequential WebSocket snapshots
	historyWarmup     = 20             // unmeasured requests before each series
	historyWorkingSet = historyBase    // jobs the like-for-like series reads on the full database
	historySpan       = 24 * time.Hour // the seeded jobs' created_at spread (well inside CAO_RETENTION)
)

// historyOp is one request the history scenario times on both databases.
type historyOp struct {
	name    string
	samples int
	perJob  bool // reads the job it is given (GET job, WebSocket); POST and the list ignore it
	run     func(ctx context.Context, id string) error
}

// runHistory checks that the hot requests do not slow down as finished jobs pile up: the p50 of
// POST, GET one job, GET the newest page of a filtered list and a WebSocket snapshot, first with
// historyBase finished jobs, then with -history-jobs more, each a clone (via COPY) of a real chain5
// job with all its steps, attempts and events.
//
// The requests that read one job (GET job, the snapshot) are timed twice on the full database. The
// like-for-like series reads historyWorkingSet jobs drawn at random from the whole history, each
// read once before timing, as the empty database's series reads its historyBase jobs: what differs
// is only how much history the indexes and tables hold. The cold series reads a job drawn from the
// whole history on every request, so nearly every request is that job's first read and waits for
// the pages the database has not cached (docs/benchmarks.md, session 18); it is reported beside the
// goal's row, against the same empty-database figure.
func runHistory(ctx context.Context, e *env) []row {
	n := e.opts.historyJobs
	progress("history: %d finished chain5 jobs vs %d", n, historyBase)
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML("", 0), workers: 1, concurrency: chainConcurrency})
	if err != nil {
		return []row{errorRow("history", "history", err)}
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	ops := []historyOp{
		{"POST /api/v1/jobs", historySamples, false, func(ctx context.Context, _ string) error {
			_, err := cl.postJob(ctx, featureChain5)
			return err
		}},
		{"GET /api/v1/jobs/{id}", historySamples, true, func(ctx context.Context, id string) error {
			return cl.get(ctx, "/api/v1/jobs/"+id)
		}},
		{"GET /api/v1/jobs?status=COMPLETED&feature=chain5&limit=50", historySamples, false, func(ctx context.Context, _ string) error {
			return cl.get(ctx, "/api/v1/jobs?status=COMPLETED&feature="+featureChain5+"&limit=50")
		}},
		{"WebSocket /ws/{id} of a finished job: connect → snapshot", historyWSSamples, true, func(ctx context.Context, id string) error {
			return wsSnapshot(ctx, "ws://"+c.apiAddr+"/ws/"+id)
		}},
	}
	res, err := historyRun(ctx, e, c, ops)
	var rows []row
	for i, op := range ops {
		scenario := fmt.Sprintf("history: %s p50, %d finished jobs (%d rows each) vs %d", op.name, n, res.rowsPerJob, historyBase)
		if op.perJob {
			scenario = fmt.Sprintf("history: %s p50, %d of %d finished jobs (%d rows each), each read once before, vs %d",
				op.name, historyWorkingSet, n, res.rowsPerJob, historyBase)
		}
		if err != nil {
			rows = append(rows, errorRow("history", scenario, err))
			continue
		}
		rows = append(rows, historyRow(scenario, res.full[i], res.empty[i], "≤ 1.5"+verdict(within(ratioOf(res.full[i], res.empty[i]), 1.5))))
		if op.perJob {
			scenario = fmt.Sprintf("history: %s p50, cold: a job of all %d drawn for each request, vs %d", op.name, n, historyBase)
			rows = append(rows, historyRow(scenario, res.cold[i], res.empty[i], "reported (first reads of pages not in memory)"))
		}
	}
	return rows
}

// ratioOf is the ratio of two series' p50s.
func ratioOf(full, empty []time.Duration) float64 {
	return float64(percentile(full, 50)) / float64(percentile(empty, 50))
}

// historyRow is one request's row: its p50 and p99 on the full database against the empty one's.
func historyRow(scenario string, full, empty []time.Duration, goal string) row {
	return row{
		target: "history", scenario: scenario,
		cao:   fmt.Sprintf("p50 %s (p99 %s)", fmtDur(percentile(full, 50)), fmtDur(percentile(full, 99))),
		floor: fmt.Sprintf("p50 %s (p99 %s), %d jobs", fmtDur(percentile(empty, 50)), fmtDur(percentile(empty, 99)), historyBase),
		ratio: ratio(float64(percentile(full, 50)), float64(percentile(empty, 50))),
		goal:  goal,
	}
}

// historyResult is the latencies of each op: on the empty database, on the full one over a working
// set as large as the empty one's, and on the full one over the whole history (cold; perJob ops only).
type historyResult struct {
	empty, full, cold [][]time.Duration
	rowsPerJob        int
}

// historyRun runs one real chain5 job as the template, seeds historyBase clones, times ops, seeds
// -history-jobs more clones and times ops again, on a working set and on the whole history.
func historyRun(ctx context.Context, e *env, c *cluster, ops []historyOp) (historyResult, error) {
	var res historyResult
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

	base, err := seedClones(ctx, e.db, tmpl, historyBase, time.Now().Add(-time.Second), 100*time.Millisecond)
	if err != nil {
		return res, err
	}
	if err := settle(ctx, e.db); err != nil {
		return res, err
	}
	if res.empty, err = timeOps(ctx, ops, base, true, false); err != nil {
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
	// The cold series first: the working set's warming pass would otherwise have read some of its jobs.
	if res.cold, err = timeOps(ctx, ops, seeded, false, true); err != nil {
		return res, err
	}
	set := make([]uuid.UUID, min(historyWorkingSet, len(seeded)))
	for i, k := range rand.Perm(len(seeded))[:len(set)] {
		set[i] = seeded[k]
	}
	if res.full, err = timeOps(ctx, ops, set, true, false); err != nil {
		return res, err
	}
	return res, nil
}

// timeOps runs each op sequentially, each time on a random job of ids, and returns the latencies.
// warm reads every job of ids once with each perJob op before timing it; perJobOnly times only the
// perJob ops (the others' series stay nil).
func timeOps(ctx context.Context, ops []historyOp, ids []uuid.UUID, warm, perJobOnly bool) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(ops))
	for i, op := range ops {
		if perJobOnly && !op.perJob {
			continue
		}
		if warm && op.perJob {
			for _, id := range ids {
				if err := op.run(ctx, id.String()); err != nil {
					return nil, fmt.Errorf("%s: %w", op.name, err)
				}
			}
		}
		for k := range historyWarmup + op.samples {
			id := ids[rand.IntN(len(ids))].String()
			t0 := time.Now()
			if err := op.run(ctx, id); err != nil {
				return nil, fmt.Errorf("%s: %w", op.name, err)
			}
			if k >= historyWarmup {
				out[i] = append(out[i], time.Since(t0))
			}
		}
		progress("  %s: p50 %s", op.name, fmtDur(percentile(out[i], 50)))
	}
	return out, nil
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

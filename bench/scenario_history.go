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
	historyBase      = 100            // finished jobs on the "empty" database, so that GETs have targets
	historySamples   = 500            // sequential samples of each HTTP request
	historyWSSamples = 300            // sequential WebSocket snapshots
	historyWarmup    = 20             // unmeasured requests before each series
	historySpan      = 24 * time.Hour // the seeded jobs' created_at spread (well inside CAO_RETENTION)
)

// historyOp is one request the history scenario times on both databases.
type historyOp struct {
	name    string
	samples int
	run     func(ctx context.Context, id string) error
}

// runHistory checks that the hot requests do not slow down as finished jobs pile up: the p50 of
// POST, GET one job, GET the newest page of a filtered list and a WebSocket snapshot, first with
// historyBase finished jobs, then with -history-jobs more, each a clone (via COPY) of a real chain5
// job with all its steps, attempts and events.
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
		{"POST /api/v1/jobs", historySamples, func(ctx context.Context, _ string) error {
			_, err := cl.postJob(ctx, featureChain5)
			return err
		}},
		{"GET /api/v1/jobs/{id}", historySamples, func(ctx context.Context, id string) error {
			return cl.get(ctx, "/api/v1/jobs/"+id)
		}},
		{"GET /api/v1/jobs?status=COMPLETED&feature=chain5&limit=50", historySamples, func(ctx context.Context, _ string) error {
			return cl.get(ctx, "/api/v1/jobs?status=COMPLETED&feature="+featureChain5+"&limit=50")
		}},
		{"WebSocket /ws/{id} of a finished job: connect → snapshot", historyWSSamples, func(ctx context.Context, id string) error {
			return wsSnapshot(ctx, "ws://"+c.apiAddr+"/ws/"+id)
		}},
	}
	empty, full, rowsPerJob, err := historyRun(ctx, e, c, ops)
	rows := make([]row, len(ops))
	for i, op := range ops {
		scenario := fmt.Sprintf("history: %s p50, %d finished jobs (%d rows each) vs %d", op.name, n, rowsPerJob, historyBase)
		if err != nil {
			rows[i] = errorRow("history", scenario, err)
			continue
		}
		r := float64(percentile(full[i], 50)) / float64(percentile(empty[i], 50))
		rows[i] = row{
			target: "history", scenario: scenario,
			cao:   fmt.Sprintf("p50 %s (p99 %s)", fmtDur(percentile(full[i], 50)), fmtDur(percentile(full[i], 99))),
			floor: fmt.Sprintf("p50 %s (p99 %s), %d jobs", fmtDur(percentile(empty[i], 50)), fmtDur(percentile(empty[i], 99)), historyBase),
			ratio: ratio(float64(percentile(full[i], 50)), float64(percentile(empty[i], 50))),
			goal:  "≤ 1.5" + verdict(within(r, 1.5)),
		}
	}
	return rows
}

// historyRun runs one real chain5 job as the template, seeds historyBase clones, times ops, seeds
// -history-jobs more clones and times ops again. It returns the latencies of each op on both.
func historyRun(ctx context.Context, e *env, c *cluster, ops []historyOp) (empty, full [][]time.Duration, rowsPerJob int, err error) {
	cl := c.client()
	defer cl.close()
	job, err := cl.postJob(ctx, featureChain5)
	if err != nil {
		return nil, nil, 0, err
	}
	if _, err := c.waitCompleted(ctx, 1, time.Minute); err != nil {
		return nil, nil, 0, fmt.Errorf("template job: %w", err)
	}
	// No worker from here on: the measured POSTs stay PENDING and add no background work.
	for _, w := range c.workers {
		w.stop(5 * time.Second)
	}
	c.workers = nil
	tmpl, err := loadTemplate(ctx, e.db, job.JobID)
	if err != nil {
		return nil, nil, 0, err
	}
	rowsPerJob = tmpl.rowCount()
	progress("  template job %s: %d rows", job.JobID, rowsPerJob)

	base, err := seedClones(ctx, e.db, tmpl, historyBase, time.Now().Add(-time.Second), 100*time.Millisecond)
	if err != nil {
		return nil, nil, 0, err
	}
	if err := settle(ctx, e.db); err != nil {
		return nil, nil, 0, err
	}
	if empty, err = timeOps(ctx, ops, base); err != nil {
		return nil, nil, 0, err
	}

	n := e.opts.historyJobs
	progress("  seeding %d jobs (%d rows)", n, n*rowsPerJob)
	began := time.Now()
	seeded, err := seedClones(ctx, e.db, tmpl, n, time.Now().Add(-time.Minute), historySpan/time.Duration(n))
	if err != nil {
		return nil, nil, 0, err
	}
	if err := settle(ctx, e.db); err != nil {
		return nil, nil, 0, err
	}
	progress("  seeded in %s", time.Since(began).Round(time.Second))
	if full, err = timeOps(ctx, ops, seeded); err != nil {
		return nil, nil, 0, err
	}
	return empty, full, rowsPerJob, nil
}

// timeOps runs each op sequentially, each time on a random job of ids, and returns the latencies.
func timeOps(ctx context.Context, ops []historyOp, ids []uuid.UUID) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(ops))
	for i, op := range ops {
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

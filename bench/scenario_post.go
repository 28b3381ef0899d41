package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// postWarmup is how long each side of the POST scenario runs before it is measured.
const postWarmup = time.Second

// runPost measures target 3: POST /api/v1/jobs throughput and latency from 32 clients against one
// API with no worker, beside the floor of 32 goroutines doing one-row INSERT transactions over a
// pgxpool as large as the API's.
func runPost(ctx context.Context, e *env) []row {
	conns := e.opts.maxConns
	if conns == 0 {
		conns = caoDefaultMaxConns
	}
	scenario := fmt.Sprintf("POST /api/v1/jobs (chain5): %d clients × %s, 1 API (%d DB conns), no workers",
		clients, e.opts.postDuration, conns)
	progress("CAO %s", scenario)
	api, err := caoPost(ctx, e)
	if err != nil {
		progress("  error: %v", err)
		return []row{errorRow("3", scenario, err)}
	}
	progress("  CAO: %s", loadCell(api, "req/s"))
	progress("floor: %d goroutines, pgxpool of %d, BEGIN; INSERT one row; COMMIT", clients, conns)
	floor, err := insertFloor(ctx, e, conns)
	r := row{target: "3", scenario: scenario, cao: loadCell(api, "req/s"), goal: "throughput ratio as high as possible"}
	if err != nil {
		progress("  error: %v", err)
		r.floor, r.ratio = errCell(err), "—"
		return []row{r}
	}
	progress("  floor: %s", loadCell(floor, "txn/s"))
	r.floor = loadCell(floor, "txn/s") + fmt.Sprintf(" (pgxpool %d, 1-row INSERT txn)", conns)
	r.ratio = fmt.Sprintf("%s (p50 ×%s)", ratio(api.perSecond(), floor.perSecond()),
		ratio(float64(percentile(api.latencies, 50)), float64(percentile(floor.latencies, 50))))
	return []row{r}
}

// loadCell formats a load result: rate, p50, p99 and errors if any.
func loadCell(r loadResult, unit string) string {
	s := fmt.Sprintf("%s, p50 %s, p99 %s", fmtRate(r.perSecond(), unit),
		fmtDur(percentile(r.latencies, 50)), fmtDur(percentile(r.latencies, 99)))
	if r.errors > 0 {
		s += fmt.Sprintf(", %d errors (%v)", r.errors, r.firstErr)
	}
	return s
}

// caoPost runs the POST load against a fresh API with no worker.
func caoPost(ctx context.Context, e *env) (loadResult, error) {
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML("", 0)})
	if err != nil {
		return loadResult{}, err
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	post := func(ctx context.Context) error {
		_, err := cl.postJob(ctx, featureChain5)
		return err
	}
	if w := runClosedLoop(ctx, clients, postWarmup, post); w.ops == 0 {
		return loadResult{}, fmt.Errorf("warm-up: no POST succeeded: %w", w.firstErr)
	}
	res := runClosedLoop(ctx, clients, e.opts.postDuration, post)
	if res.ops == 0 {
		return res, fmt.Errorf("no POST succeeded: %w", res.firstErr)
	}
	return res, ctx.Err()
}

// insertFloor runs the one-row INSERT transactions on a scratch table of the bench database, with no
// CAO process running.
func insertFloor(ctx context.Context, e *env, conns int) (loadResult, error) {
	if err := e.clean(ctx); err != nil {
		return loadResult{}, err
	}
	if _, err := e.db.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench_floor (
		id uuid PRIMARY KEY, body jsonb NOT NULL, created_at timestamptz NOT NULL)`); err != nil {
		return loadResult{}, err
	}
	cfg, err := pgxpool.ParseConfig(e.opts.pg)
	if err != nil {
		return loadResult{}, err
	}
	cfg.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return loadResult{}, err
	}
	defer pool.Close()
	body := json.RawMessage(`{"feature_name":"chain5","input_data":{}}`)
	insert := func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO bench_floor (id, body, created_at) VALUES ($1, $2, $3)`,
				uuid.New(), body, time.Now())
			return err
		})
	}
	runClosedLoop(ctx, clients, postWarmup, insert)
	res := runClosedLoop(ctx, clients, e.opts.postDuration, insert)
	if res.ops == 0 {
		return res, fmt.Errorf("no INSERT succeeded: %w", res.firstErr)
	}
	return res, ctx.Err()
}

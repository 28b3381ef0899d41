package main

import (
	"context"
	"fmt"
	"time"
)

// Load shape of the throughput scenarios.
const (
	clients          = 32 // concurrent HTTP clients (and Asynq enqueuers of the floor)
	chainConcurrency = 50 // CAO_WORKER_CONCURRENCY in the chain scenario, Concurrency of the floor
	chainWaitTimeout = 5 * time.Minute
)

// runChain measures targets 1 and 7: steps per second of five-step chains on raw Asynq (each handler
// enqueues the next task) and on CAO with 1 API and N workers (each step needs the previous one).
func runChain(ctx context.Context, e *env) []row {
	jobs := e.opts.jobs
	progress("raw asynq floor: %d chains of %d tasks, %d enqueuers", jobs, chainLength, clients)
	floor, ferr := chainFloor(ctx, e.opts, jobs, chainLength, clients)
	floorCell := fmtRate(floor, "steps/s") + " (raw asynq, handler enqueues next)"
	if ferr != nil {
		floorCell = errCell(ferr)
	} else {
		progress("  floor: %s", fmtRate(floor, "steps/s"))
	}
	var rows []row
	for _, n := range e.opts.workers {
		scenario := fmt.Sprintf("chain5 throughput: 1 API + %d worker(s) × %d, %d jobs × %d steps, %d clients",
			n, chainConcurrency, jobs, chainLength, clients)
		progress("CAO chain5: %d worker(s)", n)
		rate, err := caoChain(ctx, e, n)
		if err != nil {
			progress("  error: %v", err)
			rows = append(rows, errorRow("1, 7", scenario, err))
			continue
		}
		progress("  CAO: %s", fmtRate(rate, "steps/s"))
		rows = append(rows, row{
			target: "1, 7", scenario: scenario,
			cao:   fmtRate(rate, "steps/s"),
			floor: floorCell,
			ratio: ratio(rate, floor),
			goal:  "CAO/floor as high as possible; grows with workers",
		})
	}
	return rows
}

// caoChain posts the chain jobs to a fresh cluster of `workers` worker processes and returns steps per second
// from the first POST to the last job's finished_at.
func caoChain(ctx context.Context, e *env, workers int) (float64, error) {
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML("", 0), workers: workers, concurrency: chainConcurrency})
	if err != nil {
		return 0, err
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	start, err := postMany(ctx, cl, featureChain5, e.opts.jobs, clients)
	if err != nil {
		return 0, err
	}
	last, err := c.waitCompleted(ctx, e.opts.jobs, chainWaitTimeout)
	if err != nil {
		return 0, err
	}
	return float64(e.opts.jobs*chainLength) / last.Sub(start).Seconds(), nil
}

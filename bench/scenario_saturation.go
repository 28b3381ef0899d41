package main

import (
	"context"
	"fmt"
	"time"
)

// Shape of the limited-service scenarios: every call to the fake service takes callDelay.
const (
	callDelay          = 100 * time.Millisecond
	limitedConcurrency = 20 // CAO_WORKER_CONCURRENCY of each worker
	limitedWaitTimeout = 2 * time.Minute
)

// runSaturation measures target 0: how busy CAO keeps a service limited to 8 calls at once when 300
// one-call jobs wait, with 1, 2 and 4 workers; and that it never exceeds the limit.
func runSaturation(ctx context.Context, e *env) []row {
	var rows []row
	for _, w := range []int{1, 2, 4} {
		rows = append(rows, limitedRow(ctx, e, "0", 8, 300, w, 1.1))
	}
	return rows
}

// runSemaphore measures target 8: a small semaphore (3) with 100 one-call jobs and one worker.
func runSemaphore(ctx context.Context, e *env) []row {
	return []row{limitedRow(ctx, e, "8", 3, 100, 1, 1.3)}
}

// limitedRow runs jobs one-call jobs against the fake service limited to limit calls at once, with
// workers workers, and compares the wall time with the ideal jobs × callDelay / limit.
func limitedRow(ctx context.Context, e *env, target string, limit, jobs, workers int, goal float64) row {
	scenario := fmt.Sprintf("limited service: %d jobs × %s call, max_concurrency %d, %d worker(s) × %d",
		jobs, callDelay, limit, workers, limitedConcurrency)
	progress("CAO %s", scenario)
	calls, peak, err := limitedRun(ctx, e, limit, jobs, workers)
	if err != nil {
		progress("  error: %v", err)
		return errorRow(target, scenario, err)
	}
	ideal := time.Duration(jobs) * callDelay / time.Duration(limit)
	wall := wallTime(calls)
	busy := busyPercent(calls, limit)
	gaps := handOffGaps(calls, limit)
	cao := fmt.Sprintf("wall %s, busy %.1f%%, peak %d, all slots busy after %s, slot idle between calls p50 %s p90 %s",
		fmtDur(wall), busy, peak, fmtDur(rampUp(calls, limit)), fmtDur(percentile(gaps, 50)), fmtDur(percentile(gaps, 90)))
	if len(calls) != jobs {
		cao += fmt.Sprintf(", %d calls", len(calls))
	}
	g := fmt.Sprintf("wall/ideal ≤ %.1f, peak ≤ %d", goal, limit)
	switch {
	case peak > limit:
		g += fmt.Sprintf(" — **FAIL: peak %d > max_concurrency %d**", peak, limit)
		progress("  FAIL: %d calls in flight at once, max_concurrency is %d", peak, limit)
	default:
		g += verdict(within(wall.Seconds()/ideal.Seconds(), goal))
	}
	progress("  %s (ideal %s)", cao, fmtDur(ideal))
	return row{
		target: target, scenario: scenario, cao: cao,
		floor: fmt.Sprintf("ideal %s, busy 100%%, peak %d", fmtDur(ideal), limit),
		ratio: ratio(wall.Seconds(), ideal.Seconds()),
		goal:  g,
	}
}

// limitedRun posts the jobs to a fresh cluster whose feature `one` calls a fake service limited to
// limit calls at once, waits until all completed and returns the calls the service saw and the peak
// of calls in flight.
func limitedRun(ctx context.Context, e *env, limit, jobs, workers int) ([]span, int, error) {
	f, err := startFakeService(callDelay)
	if err != nil {
		return nil, 0, err
	}
	defer f.stop()
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML(f.url, limit), workers: workers, concurrency: limitedConcurrency})
	if err != nil {
		return nil, 0, err
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	if _, err := postMany(ctx, cl, featureOne, jobs, clients); err != nil {
		return nil, 0, err
	}
	if _, err := c.waitCompleted(ctx, jobs, limitedWaitTimeout); err != nil {
		return nil, 0, err
	}
	calls, peak := f.results()
	return calls, peak, nil
}

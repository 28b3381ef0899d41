package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Load shape of the throughput scenarios.
const (
	clients          = 32 // concurrent HTTP clients (and Asynq enqueuers of the floor)
	chainConcurrency = 50 // CAO_WORKER_CONCURRENCY in the chain scenario by default (-concurrency)
	chainWaitTimeout = 5 * time.Minute
)

// runChain measures targets 1 and 7: steps per second of five-step chains on raw Asynq (each handler
// enqueues the next task) and on CAO with 1 API and N workers (each step needs the previous one).
// With -rounds R, every round measures the floor and then each worker count, in an order rotated
// from round to round (a later run in a round is not always the same count), and the table gives
// each figure's median over the rounds with its range: one run on this kind of machine moves by
// ±15 % for no cause the bench can see.
func runChain(ctx context.Context, e *env) []row {
	jobs, counts, rounds := e.opts.jobs, e.opts.workers, e.opts.rounds
	var floors []float64
	var floorErr error
	rates := make(map[int][]float64, len(counts))
	errs := make(map[int]error, len(counts))
	var perRound []map[int]float64 // each round's rates (pooledRun: the pooled run's), for the scaling ratios
	// With several worker counts, each round also runs the largest count's handlers in one process
	// (pooledRun): what the handlers bring without the cost of the processes (pooledRow).
	runs := slices.Clone(counts)
	most := slices.Max(counts)
	pooled := most * e.opts.concurrency
	if len(counts) > 1 && most > 1 {
		runs = append(runs, pooledRun)
	}
	var floorRounds []map[int]float64 // each round's raw Asynq rates by worker processes
	for r := range rounds {
		if rounds > 1 {
			progress("chain round %d of %d", r+1, rounds)
		}
		progress("raw asynq floor: %d chains of %d tasks, %d enqueuers", jobs, chainLength, clients)
		floor, err := chainFloor(ctx, e.opts, jobs, chainLength, clients)
		if err != nil {
			floorErr = err
		} else {
			floors = append(floors, floor)
			progress("  floor: %s", fmtRate(floor, "steps/s"))
		}
		// Target 7's floor: raw Asynq in as many worker processes as each CAO run has.
		floorRound := map[int]float64{}
		if len(counts) > 1 {
			for _, n := range counts {
				rate, err := chainFloorProcs(ctx, e.opts, jobs, chainLength, clients, n)
				if err != nil {
					progress("  raw asynq in %d process(es): error: %v", n, err)
					continue
				}
				progress("  raw asynq in %d process(es): %s", n, fmtRate(rate, "steps/s"))
				floorRound[n] = rate
			}
		}
		floorRounds = append(floorRounds, floorRound)
		round := map[int]float64{}
		for i := range runs {
			n := runs[(i+r)%len(runs)]
			workers, concurrency := n, e.opts.concurrency
			if n == pooledRun {
				workers, concurrency = 1, pooled
			}
			progress("CAO chain5: %d worker(s) × %d", workers, concurrency)
			rate, err := caoChain(ctx, e, workers, concurrency)
			if err != nil {
				progress("  error: %v", err)
				errs[n] = err
				continue
			}
			progress("  CAO: %s", fmtRate(rate, "steps/s"))
			if n != pooledRun {
				rates[n] = append(rates[n], rate)
			}
			round[n] = rate
		}
		perRound = append(perRound, round)
	}
	floorCell := spread(floors, "steps/s") + " (raw asynq, handler enqueues next)"
	if len(floors) == 0 {
		floorCell = errCell(floorErr)
	}
	var rows []row
	for _, n := range counts {
		scenario := fmt.Sprintf("chain5 throughput: 1 API + %d worker(s) × %d, %d jobs × %d steps, %d clients",
			n, e.opts.concurrency, jobs, chainLength, clients)
		if len(rates[n]) == 0 {
			rows = append(rows, errorRow("1, 7", scenario, errs[n]))
			continue
		}
		rows = append(rows, row{
			target: "1, 7", scenario: scenario,
			cao:   spread(rates[n], "steps/s"),
			floor: floorCell,
			ratio: ratio(median(rates[n]), median(floors)),
			goal:  "CAO/floor as high as possible; grows with workers",
		})
	}
	rows = append(rows, scalingRows(counts, perRound, floorRounds)...)
	if len(runs) > len(counts) {
		rows = append(rows, pooledRow(counts[0], most, e.opts.concurrency, perRound, errs[pooledRun])...)
	}
	return rows
}

// pooledRun keys the pooled run (one worker process with the handlers of the largest worker count)
// in a round's rates: no worker count is 0.
const pooledRun = 0

// pooledRow is target 7's reference row: in each round, one worker process with the handlers of
// most processes (most × concurrency) over base processes, and over most processes. On a machine
// with fewer cores than processes, the second ratio is what the processes themselves cost apart
// from the handlers they bring: mostly their committers writing at the same moment, which costs
// Postgres more than one committer's larger groups (docs/benchmarks.md, session 19).
func pooledRow(base, most, concurrency int, perRound []map[int]float64, err error) []row {
	var overBase, overMost []float64
	for _, round := range perRound {
		p := round[pooledRun]
		if p <= 0 {
			continue
		}
		if b := round[base]; b > 0 {
			overBase = append(overBase, p/b)
		}
		if m := round[most]; m > 0 {
			overMost = append(overMost, p/m)
		}
	}
	scenario := fmt.Sprintf("reference: chain5 steps/s of 1 worker × %d (the handlers of %d × %d in one process) in the same round",
		most*concurrency, most, concurrency)
	if len(overBase) == 0 || len(overMost) == 0 {
		if err != nil {
			return []row{errorRow("7", scenario, err)}
		}
		return nil
	}
	return []row{{
		target:   "7",
		scenario: scenario,
		cao: fmt.Sprintf("÷ %d × %d: %s; ÷ %d × %d: %s", base, concurrency, ratioSpread(overBase),
			most, concurrency, ratioSpread(overMost)),
		floor: "—",
		ratio: fmt.Sprintf("%.2f", median(overMost)),
		goal:  "none (the ratio is over the " + fmt.Sprint(most) + " processes: what they cost beside their handlers)",
	}}
}

// scalingRows are target 7's rows: for each worker count but the first, its rate over the first
// count's in the same round (median and range over the rounds), beside the same ratio of raw Asynq
// run by as many worker processes (chainFloorProcs).
func scalingRows(counts []int, perRound, floorRounds []map[int]float64) []row {
	if len(counts) < 2 {
		return nil
	}
	base := counts[0]
	perRatios := func(rounds []map[int]float64, n int) []float64 {
		var rs []float64
		for _, round := range rounds {
			if a, b := round[n], round[base]; a > 0 && b > 0 {
				rs = append(rs, a/b)
			}
		}
		return rs
	}
	var rows []row
	for _, n := range counts[1:] {
		rs := perRatios(perRound, n)
		if len(rs) == 0 {
			continue
		}
		floor := "—"
		if fs := perRatios(floorRounds, n); len(fs) > 0 {
			floor = ratioSpread(fs) + fmt.Sprintf(" (raw asynq in %d ÷ %d worker process(es))", n, base)
		}
		m := median(rs)
		rows = append(rows, row{
			target:   "7",
			scenario: fmt.Sprintf("scaling: chain5 steps/s of %d worker(s) ÷ %d in the same round, %d round(s)", n, base, len(rs)),
			cao:      ratioSpread(rs),
			floor:    floor,
			ratio:    fmt.Sprintf("%.2f", m),
			goal:     "≥ 1 (may be flat on 2 cores; must not fall)" + verdict(m >= 0.995),
		})
	}
	return rows
}

// caoChain posts the chain jobs to a fresh cluster of `workers` worker processes of concurrency
// handlers each and returns steps per second from the first POST to the last job's finished_at.
func caoChain(ctx context.Context, e *env, workers, concurrency int) (float64, error) {
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML("", 0), workers: workers, concurrency: concurrency})
	if err != nil {
		return 0, err
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	before := c.cpuAccount()
	start, err := postMany(ctx, cl, featureChain5, e.opts.jobs, clients)
	if err != nil {
		return 0, err
	}
	posted := time.Since(start)
	last, err := c.waitCompleted(ctx, e.opts.jobs, chainWaitTimeout)
	if err != nil {
		return 0, err
	}
	c.reportPhases(ctx, start, posted, before)
	return float64(e.opts.jobs*chainLength) / last.Sub(start).Seconds(), nil
}

// reportPhases writes where a chain run's time went to stderr: when the last POST returned, when
// each share of the steps had finished (from the first POST), and the CPU each process used. A run
// that is slow for a fixed cost (a start-up, a tail) shows it here, where the rate alone cannot.
func (c *cluster) reportPhases(ctx context.Context, start time.Time, posted time.Duration, before cpuAccount) {
	shares := []float64{0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1}
	var at []time.Time
	err := c.e.db.QueryRow(ctx, `SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY finished_at)
		FROM job_steps WHERE finished_at IS NOT NULL`, shares).Scan(&at)
	if err != nil {
		progress("  phases: %v", err)
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  phases (ms from the first POST): posted %d", posted.Milliseconds())
	for i, t := range at {
		fmt.Fprintf(&b, "; %g%% %d", shares[i]*100, t.Sub(start).Milliseconds())
	}
	after := c.cpuAccount()
	b.WriteString("; CPU ms since the first POST:")
	for _, k := range cpuParts {
		fmt.Fprintf(&b, " %s %d", k, (after[k] - before[k]).Milliseconds())
	}
	progress("%s", b.String())
}

// cpuAccount is the CPU time used so far by each part of a run (cpuParts): the API, the workers
// together, every Postgres process, Redis and the bench itself (a part that cannot be read is left
// out).
type cpuAccount map[string]time.Duration

// cpuParts are cpuAccount's keys, in the order reportPhases prints them.
var cpuParts = []string{"api", "workers", "postgres", "redis", "bench"}

func (c *cluster) cpuAccount() cpuAccount {
	a := cpuAccount{}
	if d, err := c.api.cpuTime(); err == nil {
		a["api"] = d
	}
	for _, w := range c.workers {
		if d, err := w.cpuTime(); err == nil {
			a["workers"] += d
		}
	}
	for k, comm := range map[string]string{"postgres": "postgres", "redis": "redis-server"} {
		if d, err := commCPUTime(comm); err == nil {
			a[k] = d
		}
	}
	if d, err := procCPUTime("self"); err == nil {
		a["bench"] = d
	}
	return a
}

// Command bench measures CAO's hot paths against real cao-api and cao-worker processes and prints one
// markdown table in which every figure stands beside a floor measured in the same run (raw Asynq, a
// bare Postgres insert, an ideal schedule, or the same query on a small database), so that figures
// from different machines or runs are compared by their ratios.
//
// It builds both binaries from a source tree (-src), recreates a dedicated Postgres database (-pg)
// and flushes a dedicated Redis DB (-redis-db), and starts fresh processes for every scenario. The
// history scenario (-history) also recreates a second database, -pg's name + "_small", with an API
// of its own on the floor's Redis DB (-floor-redis-db).
// Progress goes to stderr, the table to stdout (and to -out).
//
//	go run ./bench                        # from the repository root
//	go run ./bench -src /tmp/cao-before -out /tmp/bench-before.md
//	go run ./bench -run chain,post -workers 1,4
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	src          string        // source tree to build cao-api and cao-worker from
	pg           string        // bench database URL (dropped and recreated)
	redisAddr    string        // Redis host:port
	redisDB      int           // Redis DB of the CAO processes (flushed)
	floorRedisDB int           // Redis DB of the raw Asynq floors (flushed)
	workers      []int         // worker process counts of the chain scenario
	jobs         int           // jobs of the chain scenario
	rounds       int           // rounds of the chain scenario
	concurrency  int           // CAO_WORKER_CONCURRENCY of each worker in the chain scenario
	postDuration time.Duration // length of each POST throughput run
	maxConns     int           // CAO_DATABASE_MAX_CONNS; 0 leaves CAO's default
	history      bool          // run the history scenario
	historyJobs  int           // finished jobs the history scenario seeds
	out          string        // also write the table here
	run          []string      // scenarios to run; empty: all
	keep         bool          // keep the temp dir with the process logs
}

// caoDefaultMaxConns is CAO_DATABASE_MAX_CONNS's default (README), the pool size of the POST floor
// when -max-conns is not set.
const caoDefaultMaxConns = 10

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.src, "src", "", "source tree to build cao-api and cao-worker from (default: the repository root above the working directory)")
	fs.StringVar(&o.pg, "pg", "postgres://postgres@127.0.0.1:5432/cao_bench?sslmode=disable", "bench database URL; the database (and, with -history, its name + _small) is DROPPED and recreated")
	fs.StringVar(&o.redisAddr, "redis", "127.0.0.1:6379", "Redis host:port")
	fs.IntVar(&o.redisDB, "redis-db", 14, "Redis DB for the CAO processes (flushed)")
	fs.IntVar(&o.floorRedisDB, "floor-redis-db", 15, "Redis DB for the raw Asynq floors (flushed)")
	workers := fs.String("workers", "1,2,4", "worker process counts for the chain throughput scenario")
	fs.IntVar(&o.jobs, "jobs", 1000, "jobs (of 5 steps) in the chain throughput scenario")
	fs.IntVar(&o.concurrency, "concurrency", chainConcurrency, "CAO_WORKER_CONCURRENCY of each worker process in the chain throughput scenario (the floor keeps 50)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of the chain throughput scenario: each measures the floor and every worker count, in an order rotated from round to round; the table gives medians (one run moves by ±15-30 % on a 2-core machine)")
	fs.DurationVar(&o.postDuration, "post-duration", 10*time.Second, "length of each POST throughput run")
	fs.IntVar(&o.maxConns, "max-conns", 0, "CAO_DATABASE_MAX_CONNS for the CAO processes and the POST floor pool (0: CAO's default, 10)")
	fs.BoolVar(&o.history, "history", false, "also run the history scenario (seeds -history-jobs finished jobs)")
	fs.IntVar(&o.historyJobs, "history-jobs", 200_000, "finished jobs the history scenario seeds")
	fs.StringVar(&o.out, "out", "", "also write the table to this file")
	only := fs.String("run", "", "comma-separated scenarios to run (chain, saturation, semaphore, latency, post, adaptive, history); default all but history")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir with binaries, registries and process logs")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for s := range strings.SplitSeq(*workers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-workers: %q is not a positive count", s)
		}
		o.workers = append(o.workers, n)
	}
	if *only != "" {
		for s := range strings.SplitSeq(*only, ",") {
			s = strings.TrimSpace(s)
			if !slices.ContainsFunc(scenarios, func(sc scenario) bool { return sc.name == s }) {
				return o, fmt.Errorf("-run: unknown scenario %q", s)
			}
			o.run = append(o.run, s)
		}
		if slices.Contains(o.run, "history") {
			o.history = true
		}
	}
	if o.redisDB == o.floorRedisDB {
		return o, errors.New("-redis-db and -floor-redis-db must differ (each is flushed)")
	}
	if o.jobs < 1 || o.historyJobs < 1 || o.postDuration <= 0 || o.rounds < 1 || o.concurrency < 1 {
		return o, errors.New("-jobs, -rounds, -concurrency, -history-jobs and -post-duration must be positive")
	}
	if o.src == "" {
		root, err := repoRoot()
		if err != nil {
			return o, err
		}
		o.src = root
	}
	abs, err := filepath.Abs(o.src)
	if err != nil {
		return o, err
	}
	o.src = abs
	return o, nil
}

// repoRoot finds the CAO repository root: the first directory at or above the working directory that
// holds both api/ and worker/.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isDir(filepath.Join(dir, "api")) && isDir(filepath.Join(dir, "worker")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no CAO source tree (with api/ and worker/) at or above the working directory; pass -src")
		}
		dir = parent
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// row is one line of the result table.
type row struct {
	target   string // the performance target(s) the row measures
	scenario string
	cao      string // CAO's figure
	floor    string // the floor measured in the same run
	ratio    string // CAO / floor (or as the goal states it)
	goal     string
}

// errorRow is the row of a measurement that failed.
func errorRow(target, scenario string, err error) row {
	return row{target: target, scenario: scenario, cao: errCell(err), floor: "—", ratio: "—", goal: "—"}
}

// errCell is an error as a table cell: its first line, without pipes, at most 160 characters.
func errCell(err error) string {
	msg := []rune(strings.ReplaceAll(strings.SplitN(err.Error(), "\n", 2)[0], "|", "/"))
	if len(msg) > 160 {
		msg = append(msg[:160], '…')
	}
	return "ERROR: " + string(msg)
}

// scenario is one measurement with its own time budget.
type scenario struct {
	name    string
	timeout time.Duration
	run     func(ctx context.Context, e *env) []row
}

// scenarios in the order they run; history runs last because it fills the database.
var scenarios = []scenario{
	{"chain", 20 * time.Minute, runChain},
	{"saturation", 5 * time.Minute, runSaturation},
	{"semaphore", 3 * time.Minute, runSemaphore},
	{"latency", 4 * time.Minute, runLatency},
	{"post", 3 * time.Minute, runPost},
	{"adaptive", 12 * time.Minute, runAdaptive},
	{"history", 30 * time.Minute, runHistory},
}

func main() {
	if spec := os.Getenv(floorWorkerEnv); spec != "" {
		if err := runFloorWorker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "bench floor worker:", err)
			os.Exit(1)
		}
		return
	}
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run prepares the environment, runs the scenarios and prints the table.
func run(ctx context.Context, opts options) error {
	began := time.Now()
	loadBefore := loadAverage()
	e, err := newEnv(ctx, opts)
	failed := err != nil
	defer func() { e.close(opts.keep || failed) }()
	if err != nil {
		return err
	}
	var rows []row
	for _, sc := range scenarios {
		if !selected(opts, sc.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		progress("== %s", sc.name)
		got := runScenario(ctx, e, sc)
		for _, r := range got {
			if strings.HasPrefix(r.cao, "ERROR") || strings.HasPrefix(r.floor, "ERROR") || strings.Contains(r.goal, "FAIL") {
				failed = true
			}
		}
		rows = append(rows, got...)
		e.killAll() // a scenario that failed half-way may leave processes behind
	}
	table := renderTable(opts, rows, time.Since(began), loadBefore, loadAverage())
	fmt.Print(table)
	if opts.out != "" {
		if err := os.WriteFile(opts.out, []byte(table), 0o644); err != nil {
			return err
		}
		progress("table written to %s", opts.out)
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

// runScenario runs one scenario within its time budget; a panic becomes an error row.
func runScenario(ctx context.Context, e *env, sc scenario) (rows []row) {
	ctx, cancel := context.WithTimeout(ctx, sc.timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			progress("%s panicked: %v\n%s", sc.name, p, debug.Stack())
			rows = append(rows, errorRow("?", sc.name, fmt.Errorf("panic: %v", p)))
		}
	}()
	return sc.run(ctx, e)
}

// selected reports whether the scenario name runs with these options.
func selected(o options, name string) bool {
	if len(o.run) > 0 {
		return slices.Contains(o.run, name)
	}
	return name != "history" || o.history
}

// renderTable returns the markdown table with a line saying what was measured and when.
func renderTable(o options, rows []row, took time.Duration, loadBefore, loadAfter string) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "CAO bench: src %s, %s, host %s, %d CPUs, load average %s at start and %s at end, took %s; ratio = CAO ÷ floor\n\n",
		o.src, time.Now().UTC().Format(time.RFC3339), host, runtime.NumCPU(), loadBefore, loadAfter, took.Round(time.Second))
	b.WriteString("| target | scenario | CAO | floor (same run) | ratio | goal |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.target, r.scenario, r.cao, r.floor, r.ratio, r.goal)
	}
	return b.String()
}

// loadAverage returns the 1-minute load average of the machine, or "?" where /proc/loadavg is missing:
// the figures of a run on a busy machine are not comparable with those of an idle one.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// progress prints a timestamped line to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

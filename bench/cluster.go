package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// env is what every scenario shares: the binaries built from the source tree, the bench database and
// Redis DB, the bench's own connections to them, and every child process started so far.
type env struct {
	opts      options
	dir       string // temp dir: binaries, registries, process logs
	apiBin    string
	workerBin string
	redisURL  string        // what the CAO processes use
	db        *pgxpool.Pool // the bench's own pool on the bench database (poll, truncate, seed)
	rdb       *redis.Client // the bench Redis DB

	mu    sync.Mutex
	procs []*proc
}

// newEnv builds the binaries, recreates the bench database and flushes the bench Redis DB.
func newEnv(ctx context.Context, opts options) (*env, error) {
	dir, err := os.MkdirTemp("", "cao-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{
		opts: opts, dir: dir,
		apiBin:    filepath.Join(dir, "cao-api"),
		workerBin: filepath.Join(dir, "cao-worker"),
		redisURL:  fmt.Sprintf("redis://%s/%d", opts.redisAddr, opts.redisDB),
	}
	if err := buildBinaries(ctx, opts.src, dir); err != nil {
		return e, err
	}
	progress("recreating database %s", redactURL(opts.pg))
	if err := recreateDatabase(ctx, opts.pg); err != nil {
		return e, err
	}
	pcfg, err := pgxpool.ParseConfig(opts.pg)
	if err != nil {
		return e, fmt.Errorf("-pg: %w", err)
	}
	pcfg.MaxConns = 8
	if e.db, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return e, err
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: opts.redisAddr, DB: opts.redisDB})
	if err := e.rdb.FlushDB(ctx).Err(); err != nil {
		return e, fmt.Errorf("redis %s db %d: %w", opts.redisAddr, opts.redisDB, err)
	}
	return e, nil
}

// close kills every child process and closes the connections. The temp dir (with the process logs)
// is removed unless keep is set.
func (e *env) close(keep bool) {
	if e == nil {
		return
	}
	e.killAll()
	if e.db != nil {
		e.db.Close()
	}
	if e.rdb != nil {
		_ = e.rdb.Close()
	}
	if keep {
		progress("process logs kept in %s", e.dir)
		return
	}
	_ = os.RemoveAll(e.dir)
}

// buildBinaries builds cao-api and cao-worker from the source tree src into dir.
func buildBinaries(ctx context.Context, src, dir string) error {
	for _, b := range []struct{ out, pkg string }{{"cao-api", "./api"}, {"cao-worker", "./worker"}} {
		progress("building %s from %s", b.out, src)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = src
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s in %s: %w\n%s", b.pkg, src, err, out)
		}
	}
	return nil
}

// recreateDatabase drops and creates the database that pgURL names, through the server's postgres
// database, so that every run starts from an empty schema.
func recreateDatabase(ctx context.Context, pgURL string) error {
	cfg, err := pgx.ParseConfig(pgURL)
	if err != nil {
		return fmt.Errorf("-pg: %w", err)
	}
	name := cfg.Database
	if name == "" || name == "postgres" {
		return fmt.Errorf("-pg must name a dedicated database (it is dropped and recreated), got %q", name)
	}
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to the postgres database of %s: %w", redactURL(pgURL), err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// clean empties every table of the bench database except schema_migrations and flushes the bench
// Redis DB. Run it with no CAO process running.
func (e *env) clean(ctx context.Context) error {
	rows, err := e.db.Query(ctx, `SELECT tablename FROM pg_tables
		WHERE schemaname = current_schema() AND tablename <> 'schema_migrations' ORDER BY tablename`)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(tables) > 0 {
		quoted := make([]string, len(tables))
		for i, t := range tables {
			quoted[i] = pgx.Identifier{t}.Sanitize()
		}
		if _, err := e.db.Exec(ctx, "TRUNCATE "+strings.Join(quoted, ", ")+" CASCADE"); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	return e.rdb.FlushDB(ctx).Err()
}

// clusterSpec says which CAO processes a scenario runs.
type clusterSpec struct {
	registry    string // registry YAML
	workers     int    // cao-worker processes
	concurrency int    // CAO_WORKER_CONCURRENCY of each worker
	// The backends, when not the bench's own: a database URL (created and empty; startCluster then
	// cleans nothing) and a Redis URL (flushed by the caller).
	database, redisURL string
}

// cluster is one cao-api and zero or more cao-worker processes over the bench database and Redis DB
// (or those its spec names).
type cluster struct {
	e       *env
	api     *proc
	apiAddr string // host:port
	workers []*proc
	spec    clusterSpec
	env     []string
}

// startCluster cleans the backends, writes the registry, starts the API (which migrates), waits until
// it answers /health, then starts the workers and waits until each has registered its Asynq server.
func (e *env) startCluster(ctx context.Context, spec clusterSpec) (*cluster, error) {
	if spec.database == "" {
		if err := e.clean(ctx); err != nil {
			return nil, fmt.Errorf("clean: %w", err)
		}
		spec.database = e.opts.pg
	}
	if spec.redisURL == "" {
		spec.redisURL = e.redisURL
	}
	reg, err := os.CreateTemp(e.dir, "registry-*.yaml")
	if err != nil {
		return nil, err
	}
	if _, err := reg.WriteString(spec.registry); err != nil {
		return nil, err
	}
	if err := reg.Close(); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	c := &cluster{e: e, apiAddr: addr, spec: spec}
	c.env = append(os.Environ(),
		"CAO_DATABASE_URL="+spec.database,
		"CAO_REDIS_URL="+spec.redisURL,
		"CAO_REGISTRY="+reg.Name(),
		"CAO_AUTH=off",
		"CAO_HTTP_ADDR="+addr,
		"CAO_WORKER_QUEUES=default=1",
		"CAO_WORKER_CONCURRENCY="+strconv.Itoa(max(spec.concurrency, 1)),
		"CAO_LOG_LEVEL=warn",
		"CAO_LOG_FORMAT=text",
		"CAO_AUTO_MIGRATE=true",
	)
	if e.opts.maxConns > 0 {
		c.env = append(c.env, "CAO_DATABASE_MAX_CONNS="+strconv.Itoa(e.opts.maxConns))
	}
	if c.api, err = e.startProc("api", e.apiBin, c.env); err != nil {
		return nil, err
	}
	if err := c.waitHealthy(ctx, time.Minute); err != nil {
		c.stop()
		return nil, err
	}
	for range spec.workers {
		if err := c.addWorker(ctx); err != nil {
			c.stop()
			return nil, err
		}
	}
	return c, nil
}

// waitHealthy polls GET /health until it answers 200.
func (c *cluster) waitHealthy(ctx context.Context, d time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(d)
	for {
		resp, err := hc.Get("http://" + c.apiAddr + "/health")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := c.api.waitTick(ctx, deadline, 20*time.Millisecond); err != nil {
			return fmt.Errorf("cao-api not healthy: %w", err)
		}
	}
}

// addWorker starts one more cao-worker and waits until its Asynq server has registered in Redis
// (asynq:servers), which it does as soon as it starts pulling tasks.
func (c *cluster) addWorker(ctx context.Context) error {
	before, err := c.e.rdb.ZCard(ctx, "asynq:servers").Result()
	if err != nil {
		return err
	}
	p, err := c.e.startProc("worker", c.e.workerBin, c.env)
	if err != nil {
		return err
	}
	c.workers = append(c.workers, p)
	deadline := time.Now().Add(time.Minute)
	for {
		n, err := c.e.rdb.ZCard(ctx, "asynq:servers").Result()
		if err == nil && n > before {
			return nil
		}
		if err := p.waitTick(ctx, deadline, 20*time.Millisecond); err != nil {
			return fmt.Errorf("cao-worker not started: %w", err)
		}
	}
}

// stop stops the cluster's processes: SIGTERM, then SIGKILL after a grace period.
func (c *cluster) stop() {
	var wg sync.WaitGroup
	for _, p := range append([]*proc{c.api}, c.workers...) {
		if p == nil {
			continue
		}
		wg.Go(func() { p.stop(5 * time.Second) })
	}
	wg.Wait()
}

// client returns an API client for the cluster's API process.
func (c *cluster) client() *apiClient { return newAPIClient("http://" + c.apiAddr) }

// proc is one child process with its log file.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit error, set before done is closed
}

// startProc starts bin with env, its output going to a log file in the temp dir.
func (e *env) startProc(name, bin string, env []string) (*proc, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := &proc{name: name, log: filepath.Join(e.dir, fmt.Sprintf("%02d-%s.log", len(e.procs), name)), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = childSysProcAttr()
	if err := p.cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	return p, nil
}

// killAll kills every child process still running and waits for it.
func (e *env) killAll() {
	e.mu.Lock()
	procs := e.procs
	e.mu.Unlock()
	for _, p := range procs {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace for the exit, then kills the process.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitTick sleeps for tick, failing if the process exited, ctx ended or the deadline passed.
func (p *proc) waitTick(ctx context.Context, deadline time.Time, tick time.Duration) error {
	if time.Now().After(deadline) {
		return fmt.Errorf("timed out\n%s", p.tail())
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %w\n%s", p.name, p.err, p.tail())
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(tick):
		return nil
	}
}

// tail returns the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return fmt.Sprintf("--- %s log (%s) ---\n%s", p.name, p.log, b)
}

// cpuTime returns the CPU time (user + system) the process has used so far, from /proc/PID/stat.
func (p *proc) cpuTime() (time.Duration, error) {
	if p.exited() {
		return 0, errors.New(p.name + " has exited")
	}
	return procCPUTime(strconv.Itoa(p.cmd.Process.Pid))
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// redactURL drops a password from a connection URL for messages.
func redactURL(s string) string {
	if cfg, err := pgx.ParseConfig(s); err == nil && cfg.Password != "" {
		return strings.ReplaceAll(s, cfg.Password, "xxxxx")
	}
	return s
}

// waitCompleted polls the jobs table every 100 ms until n jobs are COMPLETED and returns the latest
// finished_at. It fails at once when a job FAILED or was CANCELLED, when a process of the cluster
// exited, or after timeout.
func (c *cluster) waitCompleted(ctx context.Context, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	lastReport := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var completed, failed int
		var last *time.Time
		err := c.e.db.QueryRow(ctx, `SELECT
				count(*) FILTER (WHERE status = 'COMPLETED'),
				count(*) FILTER (WHERE status IN ('FAILED', 'CANCELLED')),
				max(finished_at)
			FROM jobs`).Scan(&completed, &failed, &last)
		switch {
		case err != nil:
			return time.Time{}, fmt.Errorf("poll jobs: %w", err)
		case failed > 0:
			return time.Time{}, fmt.Errorf("%d jobs FAILED or CANCELLED (%d COMPLETED)", failed, completed)
		case completed >= n && last != nil:
			return *last, nil
		case time.Now().After(deadline):
			return time.Time{}, fmt.Errorf("only %d of %d jobs COMPLETED after %s", completed, n, timeout)
		}
		for _, p := range append([]*proc{c.api}, c.workers...) {
			if p.exited() {
				return time.Time{}, fmt.Errorf("%s exited: %w\n%s", p.name, p.err, p.tail())
			}
		}
		if time.Since(lastReport) >= 5*time.Second {
			progress("  %d of %d jobs COMPLETED", completed, n)
			lastReport = time.Now()
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %d jobs COMPLETED: %w", completed, n, ctx.Err())
		}
	}
}

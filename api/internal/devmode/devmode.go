// Package devmode runs the whole CAO system in one process with embedded backends (`cao-api dev`):
// the API, in-process workers for every queue, an embedded Redis (miniredis) and an embedded SQLite
// database on disk. The node, the runner and the HTTP server are the same code as in the split
// deployment; only the backends differ.
package devmode

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/api/internal/httpapi"
	"github.com/cao-run/cao/api/internal/serve"
	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store/sqlstore"
)

// DatabaseFile is the name of the SQLite database inside the data directory.
const DatabaseFile = "cao.db"

// devDefaults replace the split deployment's defaults when the variable is unset: dev mode listens on
// loopback only, runs without API keys (unless CAO_API_KEYS is set: keys are then required), reclaims
// the steps of a killed process quickly and stops quickly, and logs for a terminal.
var devDefaults = map[string]string{
	"CAO_HTTP_ADDR":      "127.0.0.1:8000",
	"CAO_AUTH":           "off",
	"CAO_STEP_LEASE_TTL": "5s",
	"CAO_SHUTDOWN_GRACE": "5s",
	"CAO_LOG_FORMAT":     "text",
}

// Run starts dev mode with the process environment and serves until ctx ends (Ctrl-C), then stops in
// order: HTTP intake, the node's loops, the workers (within CAO_SHUTDOWN_GRACE), then the Redis client,
// SQLite and the embedded Redis. args are the flags after `dev`.
func Run(ctx context.Context, args []string) error {
	return run(ctx, args, os.LookupEnv, os.Stdout)
}

// options are the dev subcommand's flags; an empty value keeps the environment's (or dev) default.
type options struct {
	addr     string
	dataDir  string
	registry string
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("cao-api dev", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.addr, "addr", "", "listen address (default $CAO_HTTP_ADDR or 127.0.0.1:8000)")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory of the SQLite database (default $CAO_DATA_DIR or .cao)")
	fs.StringVar(&o.registry, "registry", "", "services and features file (default $CAO_REGISTRY or deploy/registry.yaml)")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: cao-api dev [--addr host:port] [--data-dir dir] [--registry file]")
		fmt.Fprintln(out, "Runs the API, the workers, an embedded Redis and an embedded SQLite database in one process.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("dev: unexpected arguments %q (flags are --addr, --data-dir, --registry)", fs.Args())
	}
	if o.addr != "" && !strings.Contains(o.addr, ":") {
		return o, fmt.Errorf("--addr: invalid value %q: expected host:port or :port", o.addr)
	}
	return o, nil
}

// loadConfig reads the CAO_* variables through env with the dev defaults, then applies the flags.
func loadConfig(env func(string) (string, bool), o options) (config.Config, error) {
	cfg, err := config.Parse(func(name string) (string, bool) {
		if v, ok := env(name); ok && strings.TrimSpace(v) != "" {
			return v, true
		}
		v, ok := devDefaults[name]
		return v, ok
	})
	if err != nil {
		return cfg, err
	}
	if o.addr != "" {
		cfg.HTTPAddr = o.addr
	}
	if o.dataDir != "" {
		cfg.DataDir = o.dataDir
	}
	if o.registry != "" {
		cfg.RegistryPath = o.registry
	}
	return cfg, nil
}

func run(ctx context.Context, args []string, env func(string) (string, bool), out io.Writer) error {
	o, err := parseFlags(args, out)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg, err := loadConfig(env, o)
	if err != nil {
		return err
	}
	log := cfg.Logger()

	reg, err := registry.Load(cfg.RegistryPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w (run from the repository root, or pass --registry FILE or set CAO_REGISTRY)", err)
		}
		return err
	}
	// Listen before opening anything: a second instance on the same address stops here.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (choose another with --addr or CAO_HTTP_ADDR): %w", cfg.HTTPAddr, err)
	}
	b, err := openBackends(ctx, cfg, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	n := node.Build(cfg, log, node.ProcessID("dev"), reg, b.store, b.rdb)
	queues := workerQueues(cfg.WorkerQueues, reg)
	r := n.NewRunner(runner.Config{Queues: queues, Concurrency: cfg.WorkerConcurrency, ShutdownGrace: cfg.ShutdownGrace, IdlePoll: cfg.WorkerIdlePoll})
	// Node.Stop runs these after its own loops stopped, in this order. The runner stops with its own
	// grace period: running steps finish or are handed back, and their outcomes are committed to SQLite
	// with the outbox rows of what comes next, which the next start relays.
	n.OnClose(func() error { return r.Stop(context.Background()) })
	hooks, herr := n.NewDeliverer() // nil without CAO_WEBHOOK_SECRET
	if hooks != nil {
		n.OnClose(func() error { return hooks.Stop(context.Background()) })
	}
	n.OnClose(b.rdb.Close)
	n.OnClose(b.store.Close)
	n.OnClose(func() error { b.redis.Close(); return nil })

	mon, err := serve.Monitoring("redis://"+b.redis.Addr(), log)
	if err == nil {
		err = herr
	}
	if err == nil {
		err = n.Start(ctx)
	}
	if err == nil {
		err = n.StartHub(ctx)
	}
	if err == nil {
		err = r.Start(ctx)
	}
	if err == nil && hooks != nil {
		err = hooks.Start(ctx)
	}
	if err != nil {
		_ = ln.Close()
		return errors.Join(err, n.Stop(context.Background()))
	}
	printBanner(out, cfg, reg, ln.Addr().String(), b.dbPath, b.redis.Addr(), queues)
	// Serve stops HTTP intake (and closes WebSockets) when ctx ends, then stops the node: its loops
	// (maintenance, relay, event hub), then the closers above. Tasks in miniredis are lost on exit by
	// design: the next start re-enqueues them from the database.
	err = serve.Serve(ctx, n, ln, httpapi.Options{Monitoring: mon})
	log.Info("dev mode stopped; jobs and their state are kept", "database", b.dbPath)
	return err
}

// backends are dev mode's embedded Redis and SQLite database.
type backends struct {
	redis  *miniredis.Miniredis
	rdb    *redis.Client
	store  *sqlstore.Store
	dbPath string
}

// openBackends migrates and opens the SQLite database under cfg.DataDir and starts the embedded Redis
// with a client for it.
func openBackends(ctx context.Context, cfg config.Config, log *slog.Logger) (*backends, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory (--data-dir or CAO_DATA_DIR) %s: %w", cfg.DataDir, err)
	}
	// Keep the database out of git without touching the repository's .gitignore.
	ignore := filepath.Join(cfg.DataDir, ".gitignore")
	if _, err := os.Stat(ignore); errors.Is(err, fs.ErrNotExist) {
		_ = os.WriteFile(ignore, []byte("*\n"), 0o600)
	}
	dbPath := filepath.Join(cfg.DataDir, DatabaseFile)
	if cfg.AutoMigrate {
		if err := migrate.Up(ctx, migrate.SQLite, dbPath); err != nil {
			return nil, fmt.Errorf("migrate %s: %w", dbPath, err)
		}
	}
	st, err := sqlstore.OpenSQLite(ctx, dbPath, sqlstore.Config{Logger: log})
	if err != nil {
		return nil, err
	}
	mr := miniredis.NewMiniRedis()
	// Real Redis expires keys as time passes; miniredis only does when told to.
	mr.ClockTTL(true)
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	rdb := redis.NewClient(&redis.Options{
		Addr: mr.Addr(),
		// miniredis lacks CLIENT SETINFO and CLIENT MAINT_NOTIFICATIONS (sent on RESP3 connections):
		// skip those handshakes instead of failing them on every new connection.
		Protocol:        2,
		DisableIdentity: true,
		// Running steps use Redis for their leases and heartbeats, beside Asynq's and the hub's own.
		PoolSize: 4 * cfg.WorkerConcurrency,
	})
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		mr.Close()
		_ = st.Close()
		return nil, fmt.Errorf("embedded redis: %w", err)
	}
	return &backends{redis: mr, rdb: rdb, store: st, dbPath: dbPath}, nil
}

// workerQueues is every queue the registry's steps use plus the configured ones; queues only the
// registry names get weight 1.
func workerQueues(configured map[string]int, reg *registry.Registry) map[string]int {
	q := maps.Clone(configured)
	if q == nil {
		q = map[string]int{}
	}
	for _, name := range reg.Queues() {
		if _, ok := q[name]; !ok {
			q[name] = 1
		}
	}
	return q
}

// printBanner tells a newcomer where everything is and how to start a job.
func printBanner(out io.Writer, cfg config.Config, reg *registry.Registry, addr, dbPath, redisAddr string, queues map[string]int) {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	base := "http://" + net.JoinHostPort(host, port)
	auth := "off (set CAO_API_KEYS=key1,key2 to require keys)"
	authHeader := ""
	if len(cfg.APIKeys)+len(cfg.AdminKeys) > 0 {
		auth = "on: send one of CAO_API_KEYS as Authorization: Bearer <key> or X-API-Key"
		authHeader = "  -H \"Authorization: Bearer <one of CAO_API_KEYS>\" \\\n"
	}
	names := slices.Sorted(maps.Keys(queues))
	qs := make([]string, len(names))
	for i, name := range names {
		qs[i] = fmt.Sprintf("%s=%d", name, queues[name])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nCAO dev mode: API, workers, embedded Redis and SQLite in one process\n\n")
	fmt.Fprintf(&b, "  API          %s/api/v1   (features: %s/api/v1/features)\n", base, base)
	fmt.Fprintf(&b, "  Monitor      %s/ui/\n", base)
	fmt.Fprintf(&b, "  Queues       %s/monitoring/   (asynqmon)\n", base)
	fmt.Fprintf(&b, "  Health       %s/health/services\n", base)
	fmt.Fprintf(&b, "  Metrics      %s/metrics\n", base)
	fmt.Fprintf(&b, "  Registry     %s (features: %s)\n", cfg.RegistryPath, strings.Join(reg.FeatureNames(), ", "))
	fmt.Fprintf(&b, "  Database     %s (SQLite; delete %s to start over)\n", dbPath, cfg.DataDir)
	fmt.Fprintf(&b, "  Redis        %s (in memory; lost tasks are re-enqueued from the database at start)\n", redisAddr)
	fmt.Fprintf(&b, "  Workers      queues %s, concurrency %d\n", strings.Join(qs, ","), cfg.WorkerConcurrency)
	fmt.Fprintf(&b, "  Auth         %s\n\n", auth)
	if _, ok := reg.Feature("business_plan"); ok {
		fmt.Fprintf(&b, "Start a job:\n  curl -X POST %s/api/v1/jobs \\\n%s", base, authHeader)
		fmt.Fprintf(&b, "  -H \"Content-Type: application/json\" \\\n")
		fmt.Fprintf(&b, "  -d '{\"feature_name\":\"business_plan\",\"input_data\":{\"business_name\":\"AI Toys\"}}'\n")
		fmt.Fprintf(&b, "then open the monitor_url it returns (ws://.../ws/<job_id>), or GET %s/api/v1/jobs/<job_id>.\n\n", base)
	} else {
		fmt.Fprintf(&b, "List the features and their inputs:\n  curl %s/api/v1/features\n\n", base)
	}
	fmt.Fprintf(&b, "Press Ctrl-C to stop; jobs in flight resume at the next start.\n\n")
	_, _ = io.WriteString(out, b.String())
}

// Command cao-worker runs CAO steps: an Asynq server over the weighted queues of CAO_WORKER_QUEUES
// that calls the registered services under their fleet-wide limits. Run as many as you like.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cao-run/cao/pkg/client/healthcheck"
	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/runner"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		// Exit 0 when this host's worker answers /health on CAO_METRICS_ADDR, 1 otherwise.
		code := healthcheck.Main(ctx, healthcheck.Worker, os.Args[2:], os.Stderr, os.LookupEnv)
		stop()
		os.Exit(code)
	}
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cao-worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("cao-worker takes no arguments but healthcheck (configure it with CAO_* environment variables), got %q", args)
	}
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	node.TuneGC(os.LookupEnv)
	log := cfg.Logger()
	n, err := node.Open(ctx, cfg, log, node.ProcessID("worker"))
	if err != nil {
		return err
	}
	for _, q := range n.Registry.Queues() {
		if _, ok := cfg.WorkerQueues[q]; !ok {
			// Not an error (another worker pool may serve it), but a common misconfiguration.
			log.Warn("the registry uses a queue this worker does not serve; set CAO_WORKER_QUEUES on some worker to include it",
				"queue", q, "served", cfg.WorkerQueues)
		}
	}
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			_ = n.Stop(context.Background())
			return fmt.Errorf("CAO_METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
		}
		srv := metricsServer(n)
		go func() { _ = srv.Serve(ln) }()
		defer func() { _ = srv.Close() }()
		log.Info("worker metrics listening", "addr", ln.Addr().String())
	}
	return Serve(ctx, n, runner.Config{Queues: cfg.WorkerQueues, Concurrency: cfg.WorkerConcurrency, ShutdownGrace: cfg.ShutdownGrace, IdlePoll: cfg.WorkerIdlePoll})
}

// metricsServer serves the worker's Prometheus metrics at /metrics and liveness at /health.
func metricsServer(n *node.Node) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// Serve runs the node and a runner until ctx ends, then drains: stop intake, let running steps finish
// within the grace period, put the rest back, stop the node.
func Serve(ctx context.Context, n *node.Node, rc runner.Config) error {
	if err := n.Start(ctx); err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	hooks, err := n.NewDeliverer()
	if err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	r := n.NewRunner(rc)
	if err := r.Start(ctx); err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	if hooks != nil {
		_ = hooks.Start(ctx)
	}
	<-ctx.Done()
	n.Logger.Info("worker shutting down")
	stopCtx := context.Background()
	err = r.Stop(stopCtx)
	if hooks != nil {
		// Attempts in flight finish; a delivery claimed but not sent is taken again after its claim.
		_ = hooks.Stop(stopCtx)
	}
	if nerr := n.Stop(stopCtx); err == nil {
		err = nerr
	}
	return err
}

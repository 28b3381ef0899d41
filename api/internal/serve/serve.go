// Package serve runs the API gateway process against Postgres and Redis, and the migrate command.
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hibiken/asynqmon"

	"github.com/cao-run/cao/api/internal/httpapi"
	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/redisconn"
)

// Run starts the API from the environment and serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	if err := cfg.CheckAuth(); err != nil {
		return err
	}
	log := cfg.Logger()
	n, err := node.Open(ctx, cfg, log, node.ProcessID("api"))
	if err != nil {
		return err
	}
	mon, err := Monitoring(cfg.RedisURL, log)
	if err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		_ = n.Stop(context.Background())
		return fmt.Errorf("CAO_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	log.Info("api listening", "addr", ln.Addr().String())
	return Serve(ctx, n, ln, httpapi.Options{Monitoring: mon})
}

// Monitoring returns the asynqmon UI for the Redis at redisURL, mounted under /monitoring. Its error
// answers are the API's error envelope (httpapi.MonitoringErrors); log receives the 5xx details.
// redisURL takes every form of CAO_REDIS_URL (one server, a Redis Cluster, a Sentinel master), with
// the same options as the process's own client (redisconn).
func Monitoring(redisURL string, log *slog.Logger) (http.Handler, error) {
	conn, err := redisconn.Parse(redisURL)
	if err != nil {
		return nil, fmt.Errorf("CAO_REDIS_URL: %w", err)
	}
	return httpapi.MonitoringErrors(asynqmon.New(asynqmon.Options{RootPath: "/monitoring", RedisConnOpt: conn.AsynqConnOpt()}), log), nil
}

// WriteTimeout is how long the server gives a plain request, once its body has arrived, to be
// answered: http.Server.WriteTimeout is CAO_HTTP_READ_TIMEOUT plus this (net/http counts it from the
// end of the headers). WebSocket connections are exempt once upgraded (httpapi.ClearDeadlines).
const WriteTimeout = 60 * time.Second

// IdleTimeout is how long a keep-alive connection may wait for its next request.
const IdleTimeout = 120 * time.Second

// HTTPServer is the API's http.Server around h: a request's headers and body must arrive within
// readTimeout (CAO_HTTP_READ_TIMEOUT; zero: config.DefaultHTTPReadTimeout), its answer be written
// within WriteTimeout after that, and an error answered before the body was read closes the
// connection instead of reading the rest at the client's pace (httpapi.CloseAfterEarlyError). Serve
// it on EnvelopeListener(ln) so that net/http's own error answers are envelopes too.
func HTTPServer(h http.Handler, readTimeout time.Duration, log *slog.Logger) *http.Server {
	if readTimeout <= 0 {
		readTimeout = config.DefaultHTTPReadTimeout
	}
	if log == nil {
		log = slog.Default()
	}
	return &http.Server{
		Handler:           httpapi.CloseAfterEarlyError(h, readTimeout),
		ReadHeaderTimeout: readTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      readTimeout + WriteTimeout,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// APIDeps hands the HTTP API the parts of the node it uses.
func APIDeps(n *node.Node) httpapi.Deps {
	keys := n.Config.Keyring()
	return httpapi.Deps{
		Jobs:     n.Orchestrator,
		Events:   n.Hub,
		Health:   n.Health,
		Metrics:  n.Metrics,
		Registry: n.Registry,
		Tokens:   auth.NewTokens(n.Redis, keys, ""),
		Limiter:  n.RateLimiter,
		Settings: httpapi.Settings{
			Keys:           keys,
			RateLimit:      n.Config.RateLimit,
			WSMaxPerTenant: n.Config.WSMaxPerTenant,
			AllowedOrigins: n.Config.AllowedOrigins,
			PublicURL:      n.Config.PublicURL,
			MaxBodyBytes:   n.Config.MaxBodyBytes,
		},
		Logger: n.Logger,
	}
}

// Serve runs the node and the HTTP API on ln until ctx ends; then it stops accepting requests, closes
// WebSockets, drains in-flight requests and stops the node.
func Serve(ctx context.Context, n *node.Node, ln net.Listener, opts httpapi.Options) error {
	if err := n.Start(ctx); err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	if err := n.StartHub(ctx); err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	api := httpapi.New(APIDeps(n), opts)
	srv := HTTPServer(api.Handler(), n.Config.HTTPReadTimeout, n.Logger)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(EnvelopeListener(ln)) }()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	n.Logger.Info("api shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = api.Stop(sctx)
	if err := srv.Shutdown(sctx); err != nil {
		n.Logger.Warn("http shutdown", "err", err)
	}
	if err := n.Stop(sctx); err != nil {
		n.Logger.Warn("node stop", "err", err)
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// Migrate runs `migrate up|down N|version` against CAO_DATABASE_URL.
func Migrate(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return errors.New("migrate: expected up, down N or version")
	}
	switch args[0] {
	case "up":
		if len(args) != 1 {
			return errors.New("migrate up takes no arguments")
		}
		if err := migrate.Up(ctx, "postgres", cfg.DatabaseURL); err != nil {
			return err
		}
	case "down":
		if len(args) != 2 {
			return errors.New("migrate down: expected the number of migrations to roll back, e.g. migrate down 1")
		}
		steps, err := strconv.Atoi(args[1])
		if err != nil || steps < 1 {
			return fmt.Errorf("migrate down: %q is not a positive number", args[1])
		}
		if err := migrate.Down(ctx, "postgres", cfg.DatabaseURL, steps); err != nil {
			return err
		}
	case "version":
		if len(args) != 1 {
			return errors.New("migrate version takes no arguments")
		}
	default:
		return fmt.Errorf("migrate: unknown subcommand %q (expected up, down N or version)", args[0])
	}
	v, dirty, err := migrate.Version(ctx, "postgres", cfg.DatabaseURL)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "version %d", v)
	if dirty {
		fmt.Fprint(out, " (dirty)")
	}
	fmt.Fprintln(out)
	return nil
}

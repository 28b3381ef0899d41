package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/testinfra"
)

// This file is the httpapi tests' infrastructure: real Postgres (a schema per environment) and real
// Redis (a logical database per environment), nodes, runners and API servers over them, built on
// pkg/testinfra.

func TestMain(m *testing.M) {
	if os.Getenv(benchChildEnv) != "" {
		os.Exit(runBenchChild()) // the benchmark's API process (see fanout_bench_test.go)
	}
	code := m.Run()
	// Keep-alive connections of the default client would look like leaks.
	http.DefaultClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testRegistry has mock services with small latencies and a feature whose graph has a fan-out, a
// join and a step that fails once and is retried.
const testRegistry = `
services:
  sim:
    kind: mock
    latency: 5ms
  flaky:
    kind: mock
    latency: 5ms
    fail_times: 1
    retry: {max_attempts: 3, initial_backoff: 20ms, max_backoff: 50ms}
features:
  pipeline:
    description: Fetch, parse and enrich a record, then score and report it.
    input:
      type: object
      required: [name]
      properties: {name: {type: string, minLength: 1}}
    steps:
      - {name: fetch, service: sim}
      - {name: parse, service: sim, needs: [fetch]}
      - {name: enrich, service: flaky, needs: [fetch]}
      - {name: score, service: sim, needs: [parse, enrich]}
      - {name: report, service: sim, needs: [score]}
`

// pipelineSteps are the step names of the pipeline feature.
var pipelineSteps = []string{"fetch", "parse", "enrich", "score", "report"}

// testEnv is one isolated backend: a migrated Postgres schema and a flushed Redis logical database.
// Several nodes over one env are replicas of the same deployment.
type testEnv struct {
	PGURL    string
	RedisURL string
	Registry *registry.Registry
}

// newTestEnv creates the schema and reserves the Redis database; both are cleaned up with the test.
func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	reg, err := registry.Parse("test-registry.yaml", []byte(testRegistry), nil)
	require.NoError(t, err)
	return &testEnv{PGURL: postgresSchema(t), RedisURL: redisDB(t), Registry: reg}
}

// postgresSchema creates an empty schema, migrates it and returns a URL whose connections use it.
func postgresSchema(t testing.TB) string {
	t.Helper()
	pgURL := testinfra.PostgresSchema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, migrate.Up(ctx, migrate.Postgres, pgURL))
	return pgURL
}

// redisDB reserves an isolated Redis logical database for the test and returns its URL.
func redisDB(t testing.TB) string {
	t.Helper()
	return testinfra.Redis(t).URL
}

// nodeOptions tune one node of a test environment.
type nodeOptions struct {
	APIKeys        []string
	AllowedOrigins []string
	Runner         bool // also run a worker for every queue in this process
	Listener       func(*httptest.Server)
	WS             func(*wsConfig) // tunes the WebSocket monitor (shorter intervals)
}

// testAPI is one API replica: a started node, optionally a runner, and an httptest server.
type testAPI struct {
	Node   *node.Node
	Server *Server
	HTTP   *httptest.Server
	URL    string // http://127.0.0.1:port
}

// WSURL is ws://host/ws/{id} with an optional query.
func (a *testAPI) WSURL(jobID, query string) string {
	u := "ws" + strings.TrimPrefix(a.URL, "http") + "/ws/" + jobID
	if query != "" {
		u += "?" + query
	}
	return u
}

// startAPI builds and starts a node over env (its own store pool and Redis client, as a separate
// process would have), and serves the API. Everything stops at cleanup, in shutdown order.
func (e *testEnv) startAPI(t testing.TB, opts nodeOptions) *testAPI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := config.Parse(func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	cfg.DatabaseURL, cfg.RedisURL = e.PGURL, e.RedisURL
	cfg.APIKeys, err = auth.ParseKeys(strings.Join(opts.APIKeys, ","), false)
	require.NoError(t, err)
	cfg.AllowedOrigins = opts.AllowedOrigins
	cfg.AuthOff = len(opts.APIKeys) == 0

	st, err := sqlstore.OpenPostgres(ctx, e.PGURL, sqlstore.Config{MaxOpenConns: 4, MaxIdleConns: 4})
	require.NoError(t, err)
	ropt, err := redis.ParseURL(e.RedisURL)
	require.NoError(t, err)
	rdb := redis.NewClient(ropt)
	log := testLogger()
	n := node.Build(cfg, log, "test-"+testinfra.RandomSuffix(), e.Registry, st, rdb)
	n.OnClose(rdb.Close)
	n.OnClose(st.Close)
	require.NoError(t, n.Start(ctx))
	require.NoError(t, n.StartHub(ctx))

	ws := defaultWSConfig()
	if opts.WS != nil {
		opts.WS(&ws)
	}
	srv := newServer(nodeDeps(n), Options{}, ws)
	hs := httptest.NewUnstartedServer(srv.Handler())
	if opts.Listener != nil {
		opts.Listener(hs)
	}
	hs.Start()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		_ = srv.Stop(sctx)
		hs.Close()
		_ = n.Stop(sctx)
	})
	a := &testAPI{Node: n, Server: srv, HTTP: hs, URL: hs.URL}
	if opts.Runner {
		a.startRunner(t)
	}
	return a
}

// startRunner starts a worker for the default queue in this node's process; it stops at cleanup,
// before the node.
func (a *testAPI) startRunner(t testing.TB) {
	t.Helper()
	r := a.Node.NewRunner(runner.Config{
		Queues: map[string]int{registry.DefaultQueue: 1}, Concurrency: 8,
		PollInterval: 20 * time.Millisecond, BusyDelay: 20 * time.Millisecond, ShutdownGrace: time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		_ = r.Stop(sctx)
	})
}

// testLogger is silent unless CAO_TEST_LOG is set (then it writes text logs to stderr).
func testLogger() *slog.Logger {
	if os.Getenv("CAO_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// do sends a JSON request to the API and decodes the JSON answer into out (when not nil).
func (a *testAPI) do(t testing.TB, method, path string, body any, out any, hdr ...string) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.URL+path, rd)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, json.Unmarshal(b, out), "body: %s", b)
	}
	return res.StatusCode
}

// createJob starts a pipeline job through the API and returns its id.
func (a *testAPI) createJob(t testing.TB, hdr ...string) string {
	t.Helper()
	var res struct {
		JobID string `json:"job_id"`
	}
	code := a.do(t, http.MethodPost, "/api/v1/jobs",
		map[string]any{"feature_name": "pipeline", "input_data": map[string]any{"name": "acme"}}, &res, hdr...)
	require.Equal(t, http.StatusAccepted, code)
	require.NotEmpty(t, res.JobID)
	return res.JobID
}

// emitEvents appends n synthetic step events to the job's event log, batch per transaction (as the
// orchestrator does: seq from last_seq, in the transaction that moves last_seq), and publishes each
// batch after commit unless publish is false (a lost publish).
func emitEvents(t testing.TB, n *node.Node, jobID string, count, batch int, publish bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub := events.NewRedisPublisher(n.Redis, nil)
	for done := 0; done < count; {
		k := min(batch, count-done)
		var evs []store.Event
		err := n.Store.Tx(ctx, func(tx store.Tx) error {
			job, err := tx.LockJob(ctx, jobID)
			if err != nil {
				return err
			}
			evs = make([]store.Event, k)
			now := time.Now().UTC().Truncate(time.Microsecond)
			for i := range evs {
				job.LastSeq++
				evs[i] = store.Event{
					JobID: jobID, Seq: job.LastSeq, Type: store.EventStep, Step: "fetch",
					Status: string(store.StepRunning), Attempt: done + i + 1, Run: 1, At: now,
				}
			}
			if err := tx.AppendEvents(ctx, evs); err != nil {
				return err
			}
			return tx.UpdateJob(ctx, job)
		})
		require.NoError(t, err)
		if publish {
			pub.Post(evs)
			require.NoError(t, pub.Flush(ctx))
		}
		done += k
	}
}

// nodeDeps hands the API the parts of a node it uses, as serve.APIDeps does (which these tests
// cannot import: serve imports this package).
func nodeDeps(n *node.Node) Deps {
	return Deps{
		Jobs: n.Orchestrator, Events: n.Hub, Health: n.Health, Metrics: n.Metrics, Registry: n.Registry,
		Tokens:  auth.NewTokens(n.Redis, n.Config.Keyring(), ""),
		Limiter: n.RateLimiter,
		Settings: Settings{
			RateLimit: n.Config.RateLimit, WSMaxPerTenant: n.Config.WSMaxPerTenant,
			Keys: n.Config.Keyring(), AllowedOrigins: n.Config.AllowedOrigins,
			PublicURL: n.Config.PublicURL, MaxBodyBytes: n.Config.MaxBodyBytes,
		},
		Logger: n.Logger,
	}
}

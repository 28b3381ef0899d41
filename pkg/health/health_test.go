package health_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/health"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

// setup returns a checker over the embedded backends (SQLite and miniredis, as in dev mode) and a
// registry with a mock service and an http service whose probe answers with probeStatus.
func setup(t *testing.T, probeStatus *atomic.Int32) (*health.Checker, *miniredis.Miniredis, *limiter.Semaphore) {
	t.Helper()
	probe := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(probeStatus.Load()))
	}))
	t.Cleanup(probe.Close)
	reg, err := registry.Parse("r.yaml", []byte(strings.ReplaceAll(`
services:
  sim: {kind: mock, max_concurrency: 2}
  api: {kind: http, base_url: BASE, health: {method: GET, path: /ping}}
features:
  f: {steps: [{name: a, service: sim, queue: medium}]}
`, "BASE", probe.URL)), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	sem := limiter.NewSemaphore(rdb, limiter.Config{})
	return health.NewChecker(teststore.SQLite(t), rdb, reg, sem, caller.New(caller.Config{}), reg.Queues()), mr, sem
}

func TestReport(t *testing.T) {
	t.Parallel()
	var status atomic.Int32
	status.Store(http.StatusOK)
	c, _, sem := setup(t, &status)
	ctx := context.Background()
	_, err := sem.Acquire(ctx, "sim", 2, time.Minute, "")
	require.NoError(t, err)

	rep := c.Run(ctx)
	require.Equal(t, health.StatusOK, rep.Status)
	require.Equal(t, health.StatusOK, rep.Postgres.Status)
	require.Equal(t, "sqlite", rep.Postgres.Backend)
	require.Equal(t, health.StatusOK, rep.Redis.Status)
	require.Contains(t, rep.Queues, "medium")
	require.Equal(t, health.ServiceCheck{Status: health.StatusOK, Kind: "mock", LeasesInUse: 1, MaxConcurrency: 2}, rep.Services["sim"])
	require.Equal(t, "ok", rep.Services["api"].Probe)
	require.False(t, c.Unavailable(ctx))

	// A failing probe degrades the report; it is not down.
	status.Store(http.StatusInternalServerError)
	rep = c.Run(ctx)
	require.Equal(t, health.StatusDegraded, rep.Status)
	require.Equal(t, "failed", rep.Services["api"].Probe)
	require.NotEmpty(t, rep.Services["api"].Error)
}

func TestRedisDownIsDown(t *testing.T) {
	t.Parallel()
	var status atomic.Int32
	status.Store(http.StatusOK)
	c, mr, _ := setup(t, &status)
	mr.Close()
	ctx := context.Background()
	rep := c.Run(ctx)
	require.Equal(t, health.StatusDown, rep.Status)
	require.Equal(t, health.StatusDown, rep.Redis.Status)
	require.NotEmpty(t, rep.Redis.Error)
	require.Equal(t, health.StatusOK, rep.Postgres.Status)
	require.True(t, c.Unavailable(ctx))
}

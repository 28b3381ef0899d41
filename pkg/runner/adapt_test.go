package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

// provider is a fake rate-limited API: answer decides, for the nth call (1-based) and the calls in
// flight including it, the status and headers of the answer, which comes after delay.
type provider struct {
	srv    *httptest.Server
	delay  time.Duration
	answer func(n, inflight int, h http.Header) int

	mu       sync.Mutex
	inflight int
	calls    []providerCall
}

type providerCall struct {
	at, answered time.Time
	status       int
}

func newProvider(t *testing.T, delay time.Duration, answer func(n, inflight int, h http.Header) int) *provider {
	t.Helper()
	p := &provider{delay: delay, answer: answer}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *provider) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	p.mu.Lock()
	p.inflight++
	p.calls = append(p.calls, providerCall{at: time.Now()})
	n, inflight := len(p.calls), p.inflight
	status := p.answer(n, inflight, w.Header())
	p.mu.Unlock()
	if status == http.StatusOK && p.delay > 0 {
		t := time.NewTimer(p.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	// Counted out before the answer leaves, so before the worker can free its slot.
	p.mu.Lock()
	p.inflight--
	p.calls[n-1].answered, p.calls[n-1].status = time.Now(), status
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"call": %d}`, n)
}

func (p *provider) snapshot() []providerCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// cluster is a deployment in the test process: nodes over one Postgres schema and one Redis
// database, each running a worker.
type cluster struct {
	t     *testing.T
	ctx   context.Context
	reg   *registry.Registry
	cfg   config.Config
	st    store.Store
	url   string // the Redis URL every node connects to
	nodes []*node.Node
	rdb   *redis.Client
}

func startCluster(t *testing.T, registryYAML string, workers int) *cluster {
	t.Helper()
	return startClusterWith(t, registryYAML, workers, nil)
}

// startClusterWith is startCluster with tune, when set, changing each worker's runner.Config.
func startClusterWith(t *testing.T, registryYAML string, workers int, tune func(*runner.Config)) *cluster {
	t.Helper()
	return startClusterEnv(t, registryYAML, workers, nil, tune)
}

// startClusterEnv is startClusterWith with the nodes configured by env (CAO_* variables) instead of
// the defaults.
func startClusterEnv(t *testing.T, registryYAML string, workers int, env map[string]string, tune func(*runner.Config)) *cluster {
	t.Helper()
	reg, err := registry.Parse("adapt.yaml", []byte(registryYAML), nil)
	require.NoError(t, err)
	st, _ := teststore.Postgres(t)
	rd := testinfra.Redis(t)
	cfg, err := config.Parse(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	require.NoError(t, err)
	c := &cluster{t: t, ctx: testinfra.Context(t, 3*time.Minute), reg: reg, cfg: cfg, st: st, url: rd.URL, rdb: rd.Client}
	for range workers {
		n := c.startNode("w")
		rc := runner.Config{
			Queues: map[string]int{registry.DefaultQueue: 1}, Concurrency: 10,
			PollInterval: 20 * time.Millisecond, BusyDelay: 50 * time.Millisecond, ShutdownGrace: time.Second,
		}
		if tune != nil {
			tune(&rc)
		}
		r := n.NewRunner(rc)
		require.NoError(t, r.Start(c.ctx))
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			require.NoError(t, r.Stop(sctx)) // before its node stops (cleanups run last first)
		})
		c.nodes = append(c.nodes, n)
	}
	return c
}

// startNode builds and starts a node of the cluster with its own Redis client, stopped at cleanup.
func (c *cluster) startNode(role string) *node.Node {
	c.t.Helper()
	opt, err := redis.ParseURL(c.url)
	require.NoError(c.t, err)
	rdb := redis.NewClient(opt)
	n := node.Build(c.cfg, slog.New(slog.DiscardHandler), fmt.Sprintf("%s-%s", role, testinfra.RandomSuffix()), c.reg, c.st, rdb)
	n.OnClose(rdb.Close)
	require.NoError(c.t, n.Start(c.ctx))
	c.t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(c.t, n.Stop(sctx))
	})
	return n
}

func (c *cluster) create(feature string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		v, _, err := c.nodes[i%len(c.nodes)].Orchestrator.CreateJob(c.ctx, orchestrator.CreateRequest{Feature: feature, Input: json.RawMessage(`{}`)})
		require.NoError(c.t, err)
		ids[i] = v.Job.ID
	}
	return ids
}

func (c *cluster) job(id string) *orchestrator.JobView {
	v, err := c.nodes[0].Orchestrator.GetJob(c.ctx, store.AllTenants, id)
	require.NoError(c.t, err)
	return v
}

func (c *cluster) waitCompleted(ids []string, within time.Duration) {
	c.t.Helper()
	testinfra.Eventually(c.t, within, func() bool {
		for _, id := range ids {
			if c.job(id).Job.Status != store.JobCompleted {
				return false
			}
		}
		return true
	}, "%d jobs completed", len(ids))
}

func (c *cluster) state(service string, aimd *limiter.AIMD) limiter.State {
	st, err := limiter.AdaptiveFor(c.nodes[0].Semaphore).State(c.ctx, service, aimd)
	require.NoError(c.t, err)
	return st
}

const holdRegistry = `
services:
  llm:
    base_url: %s
    max_concurrency: 4
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 20ms}
features:
  one:
    steps:
      - {name: call, service: llm}
`

// TestBudgetHoldStopsEveryWorker: the provider answers one call with remaining=0 and a reset in 2 s.
// Steps of two workers make no call during the hold, wait for it in their workers without using an
// attempt, and all run once it ends.
func TestBudgetHoldStopsEveryWorker(t *testing.T) {
	t.Parallel()
	p := newProvider(t, 20*time.Millisecond, func(n, _ int, h http.Header) int {
		h.Set("x-ratelimit-limit-requests", "100")
		h.Set("x-ratelimit-remaining-requests", "50")
		h.Set("x-ratelimit-reset-requests", "20ms")
		if n == 1 {
			h.Set("x-ratelimit-remaining-requests", "0")
			h.Set("x-ratelimit-reset-requests", "2s")
		}
		return http.StatusOK
	})
	c := startCluster(t, fmt.Sprintf(holdRegistry, p.srv.URL), 2)

	first := c.create("one", 1)
	c.waitCompleted(first, 30*time.Second)
	held := c.state("llm", nil)
	require.Positive(t, held.Hold, "the spent budget put the service on hold")
	require.Equal(t, "requests", held.HoldReason)
	answered := p.snapshot()[0].answered
	// Health shows the budget as the provider reported it.
	llm := c.nodes[0].Health.Run(c.ctx).Services["llm"]
	require.Len(t, llm.Budgets, 1, "%+v", llm)
	b := llm.Budgets[0]
	require.Equal(t, "requests", b.Name)
	require.Equal(t, int64(100), b.Limit)
	require.Zero(t, b.Remaining)
	require.InDelta(t, 1.5, b.ResetSeconds, 0.55, "reported 2 s before the job completed")

	ids := c.create("one", 8)
	c.waitCompleted(ids, 30*time.Second)
	calls := p.snapshot()
	require.Len(t, calls, 9)
	for i, call := range calls[1:] {
		require.False(t, call.at.Before(answered.Add(2*time.Second-5*time.Millisecond)),
			"call %d arrived %s after the answer that spent the budget, during the 2s hold", i+2, call.at.Sub(answered))
	}
	for _, id := range ids {
		for _, s := range c.job(id).Steps {
			require.Equal(t, 1, s.Attempts, "waiting for the hold is not an attempt")
		}
	}
	require.Zero(t, c.state("llm", nil).Hold)
}

// TestRetryAfterHoldBeyondMaxWait: a 429 with Retry-After: 3 holds every worker for 3 s, longer than
// a worker waits in process (MaxRateWait, 2 s): the waiting steps go back to their queue and run
// when the hold ends, still on their first attempt; the step that got the 429 retries.
func TestRetryAfterHoldBeyondMaxWait(t *testing.T) {
	t.Parallel()
	p := newProvider(t, 20*time.Millisecond, func(n, _ int, h http.Header) int {
		if n == 1 {
			h.Set("Retry-After", "3")
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	c := startCluster(t, fmt.Sprintf(holdRegistry, p.srv.URL), 2)

	first := c.create("one", 1)
	testinfra.Eventually(t, 30*time.Second, func() bool { return len(p.snapshot()) == 1 && !p.snapshot()[0].answered.IsZero() },
		"the first call answered")
	answered := p.snapshot()[0].answered
	ids := c.create("one", 6)
	c.waitCompleted(append(first, ids...), 60*time.Second)
	calls := p.snapshot()
	require.Len(t, calls, 8, "six steps and the retried one")
	for i, call := range calls[1:] {
		require.False(t, call.at.Before(answered.Add(3*time.Second-5*time.Millisecond)),
			"call %d arrived %s after the 429, during the 3s hold", i+2, call.at.Sub(answered))
	}
	require.Equal(t, 2, c.job(first[0]).Steps[0].Attempts, "the step answered 429 retried")
	for _, id := range ids {
		require.Equal(t, 1, c.job(id).Steps[0].Attempts, "waiting for the hold is not an attempt")
	}
}

const adaptiveRegistry = `
services:
  llm:
    base_url: %s
    max_concurrency: 12
    adaptive: {min: 1}
    retry: {max_attempts: 10, initial_backoff: 10ms, max_backoff: 50ms}
features:
  one:
    steps:
      - {name: call, service: llm}
`

// TestAdaptiveLimitFindsTheProvidersCapacity: a provider that answers 429 whenever more than 3
// calls are in flight. The fleet-wide limit starts at 12 and settles around 3; the later calls get
// almost no 429.
func TestAdaptiveLimitFindsTheProvidersCapacity(t *testing.T) {
	t.Parallel()
	p := newProvider(t, 30*time.Millisecond, func(_, inflight int, _ http.Header) int {
		if inflight > 3 {
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	c := startCluster(t, fmt.Sprintf(adaptiveRegistry, p.srv.URL), 2)
	aimd := &limiter.AIMD{Max: 12, Min: 1}
	require.Equal(t, 12, c.state("llm", aimd).Limit)

	ids := c.create("one", 150)
	c.waitCompleted(ids, 2*time.Minute)
	calls := p.snapshot()
	var late429 int
	late := calls[len(calls)/2:]
	for _, call := range late {
		if call.status == http.StatusTooManyRequests {
			late429++
		}
	}
	st := c.state("llm", aimd)
	t.Logf("%d calls, %d answered 429 in the second half; effective limit %d after %d decreases", len(calls), late429, st.Limit, st.Gen)
	require.GreaterOrEqual(t, st.Gen, int64(2), "the limit was halved at least twice (12 -> 6 -> 3)")
	require.LessOrEqual(t, st.Limit, 4)
	require.GreaterOrEqual(t, st.Limit, 2)
	require.Less(t, float64(late429)/float64(len(late)), 0.10, "once converged, few calls are refused")

	// Every process reports the fleet-wide effective limit.
	for _, n := range c.nodes {
		families, err := n.Metrics.Registry.Gather()
		require.NoError(t, err)
		var got []float64
		for _, f := range families {
			if f.GetName() == "cao_service_effective_limit" {
				for _, m := range f.GetMetric() {
					got = append(got, m.GetGauge().GetValue())
				}
			}
		}
		require.Equal(t, []float64{float64(st.Limit)}, got)
	}
}

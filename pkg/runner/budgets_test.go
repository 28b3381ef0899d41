package runner_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

// llm is a fake chat completions API: it answers each call with a usage of tokens(body), after
// hold(body), and counts the calls in flight per customer (the body's "customer").
type llm struct {
	srv    *httptest.Server
	tokens func(body map[string]any) (int, bool) // total_tokens, and whether to report usage at all
	hold   time.Duration

	mu       sync.Mutex
	calls    int
	inflight map[string]int
	peak     map[string]int
	peakAll  int
	all      int
}

func newLLM(t *testing.T, hold time.Duration, tokens func(body map[string]any) (int, bool)) *llm {
	t.Helper()
	l := &llm{hold: hold, tokens: tokens, inflight: map[string]int{}, peak: map[string]int{}}
	l.srv = httptest.NewServer(http.HandlerFunc(l.serve))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *llm) serve(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	customer, _ := body["customer"].(string)
	l.mu.Lock()
	l.calls++
	l.inflight[customer]++
	l.all++
	l.peak[customer] = max(l.peak[customer], l.inflight[customer])
	l.peakAll = max(l.peakAll, l.all)
	l.mu.Unlock()
	if l.hold > 0 {
		t := time.NewTimer(l.hold)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	// Counted out before the answer leaves, so before the worker can free its slots.
	l.mu.Lock()
	l.inflight[customer]--
	l.all--
	l.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	n, report := 0, false
	if l.tokens != nil {
		n, report = l.tokens(body)
	}
	if !report {
		_, _ = fmt.Fprint(w, `{"choices": []}`)
		return
	}
	_, _ = fmt.Fprintf(w, `{"choices": [], "usage": {"prompt_tokens": %d, "completion_tokens": 0, "total_tokens": %d}}`, n, n)
}

func (l *llm) state() (calls int, peak map[string]int, peakAll int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := make(map[string]int, len(l.peak))
	for k, v := range l.peak {
		p[k] = v
	}
	return l.calls, p, l.peakAll
}

func (c *cluster) createWith(feature string, input any) string {
	c.t.Helper()
	b, err := json.Marshal(input)
	require.NoError(c.t, err)
	v, _, err := c.nodes[0].Orchestrator.CreateJob(c.ctx, orchestrator.CreateRequest{Feature: feature, Input: b})
	require.NoError(c.t, err)
	return v.Job.ID
}

func (c *cluster) budgets(service string) []limiter.BudgetState {
	c.t.Helper()
	st, err := c.nodes[0].Health.RateBudgets(c.ctx, service)
	require.NoError(c.t, err)
	return st
}

const tokenRegistry = `
services:
  llm:
    base_url: %s
    rate_limits:
      - {requests: 100, per: 1h}
      - {units: 100000, per: 1h, cost: "{{ .response.usage.total_tokens }}", reserve: "{{ .request.body.max_tokens }}"}
    retry: {max_attempts: 1}
features:
  chat:
    steps:
      - name: ask
        service: llm
        request: {method: POST, path: /v1/chat/completions, body: {max_tokens: "{{ .input.max_tokens }}"}}
  unbounded:
    steps:
      - {name: ask, service: llm, request: {method: POST, path: /v1/chat/completions, body: {}}}
`

// TestTokenBudgetSettlesFromTheAnswer: each call reserves its max_tokens (a template over the
// rendered request) and the answer's total_tokens settles it, so the budget counts what the calls
// cost, not what they might have; an answer without usage keeps its reservation. A reserve that
// cannot be rendered fails the step with a template error, without a call.
//
// Not parallel, as TestConcurrencyKeyAcrossWorkers: each runs workers that load this 2-core machine,
// and TestAdaptiveLimitFindsTheProvidersCapacity, which needs its calls to overlap, is sensitive to
// load beside it (it fails under heavy load on its own too); these run before the parallel tests.
func TestTokenBudgetSettlesFromTheAnswer(t *testing.T) { //nolint:paralleltest // see above
	l := newLLM(t, 0, func(body map[string]any) (int, bool) {
		n, _ := body["max_tokens"].(float64)
		if n == 7 {
			return 0, false // no usage in this answer
		}
		return int(n) / 10, true
	})
	c := startCluster(t, fmt.Sprintf(tokenRegistry, l.srv.URL), 1)
	var ids []string
	for _, n := range []int{1000, 2000, 3000, 4000} {
		ids = append(ids, c.createWith("chat", map[string]any{"max_tokens": n}))
	}
	c.waitCompleted(ids, 30*time.Second)
	st := c.budgets("llm")
	require.Len(t, st, 2)
	require.EqualValues(t, 4, st[0].Used, "four requests")
	require.EqualValues(t, 1000, st[1].Used, "the tokens the answers reported (100+200+300+400), not the 10000 reserved")
	require.EqualValues(t, 99000, st[1].Remaining)
	require.Positive(t, st[1].Reset)

	id := c.createWith("chat", map[string]any{"max_tokens": 7})
	c.waitCompleted([]string{id}, 30*time.Second)
	require.EqualValues(t, 1007, c.budgets("llm")[1].Used, "an answer without usage keeps its reservation")

	// The request has no max_tokens: the reserve cannot be rendered, and the step fails at once.
	calls, _, _ := l.state()
	id = c.createWith("unbounded", map[string]any{})
	testinfra.Eventually(t, 30*time.Second, func() bool { return c.job(id).Job.Status == store.JobFailed }, "the job fails")
	s := c.job(id).Steps[0]
	require.Equal(t, "template", s.ErrorClass)
	require.Contains(t, s.Error, `render reserve (services.llm.rate_limits[1].reserve)`)
	require.Contains(t, s.Error, "max_tokens")
	require.Equal(t, 1, s.Attempts)
	after, _, _ := l.state()
	require.Equal(t, calls, after, "no call left")
	st = c.budgets("llm")
	require.EqualValues(t, 5, st[0].Used, "the failed step took no request")
	require.EqualValues(t, 1007, st[1].Used)
}

const keyRegistry = `
services:
  llm:
    base_url: %s
    max_concurrency: 12
    concurrency_key: "{{ .input.customer }}"
    max_concurrency_per_key: 2
features:
  chat:
    steps:
      - name: ask
        service: llm
        request: {method: POST, path: /v1/chat/completions, body: {customer: "{{ .input.customer }}"}}
`

// TestConcurrencyKeyAcrossWorkers: two workers run the steps of three customers, whose calls hold
// for a while: no customer ever has more than max_concurrency_per_key calls in flight at the
// provider, different customers run in parallel, and waiting for a key uses no attempt. A job
// without a customer (an empty key) is not limited per key.
func TestConcurrencyKeyAcrossWorkers(t *testing.T) { //nolint:paralleltest // as TestTokenBudgetSettlesFromTheAnswer
	l := newLLM(t, 150*time.Millisecond, nil)
	c := startCluster(t, fmt.Sprintf(keyRegistry, l.srv.URL), 2)
	var ids []string
	for i := range 24 {
		ids = append(ids, c.createWith("chat", map[string]any{"customer": fmt.Sprintf("customer-%d", i%3)}))
	}
	for range 4 {
		ids = append(ids, c.createWith("chat", map[string]any{"customer": ""}))
	}
	c.waitCompleted(ids, 60*time.Second)
	calls, peak, peakAll := l.state()
	require.Equal(t, 28, calls)
	for k := range 3 {
		require.Equal(t, 2, peak[fmt.Sprintf("customer-%d", k)], "customer-%d's calls in flight at once", k)
	}
	require.GreaterOrEqual(t, peakAll, 6, "the customers ran in parallel")
	for _, id := range ids {
		require.Equal(t, 1, c.job(id).Steps[0].Attempts, "waiting for a key is not an attempt")
	}
	t.Logf("peak in flight per customer %v, overall %d", peak, peakAll)
	// Every key slot is given back (just after the outcome is recorded, as the service's slot is:
	// the last job may be COMPLETED a moment before).
	testinfra.Eventually(t, 10*time.Second, func() bool {
		for k := range 3 {
			n, err := c.nodes[0].Semaphore.InUse(c.ctx, runner.KeySemaphore("llm", fmt.Sprintf("customer-%d", k)))
			require.NoError(t, err)
			if n != 0 {
				return false
			}
		}
		return true
	}, "every key slot given back")
}

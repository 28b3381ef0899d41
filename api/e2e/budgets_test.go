package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tokenAPI is a fake OpenAI-compatible chat completions API (POST /v1/chat/completions) that
// enforces a budget of limit tokens per window, as a sliding window over the actual total_tokens of
// the calls it accepts: a call that would take the window over the budget is refused with 429 and
// the x-ratelimit-*-tokens headers. Every answer reports the budget in those headers too, as
// OpenAI's do. A call costs a share of its max_tokens (65 to 100 %, from its seed), never more.
type tokenAPI struct {
	srv    *httptest.Server
	limit  int
	window time.Duration

	mu       sync.Mutex
	accepted []tokenCall
	refused  int
}

type tokenCall struct {
	at     time.Time
	tokens int
	max    int
}

func newTokenAPI(t *testing.T, limit int, window time.Duration) *tokenAPI {
	t.Helper()
	f := &tokenAPI{limit: limit, window: window}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// tokensOf is what a call with max_tokens and seed costs.
func tokensOf(maxTokens, seed int) int { return maxTokens * (65 + seed*29%36) / 100 }

func (f *tokenAPI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
		http.NotFound(w, r)
		return
	}
	var req struct {
		Model     string `json:"model"`
		MaxTokens int    `json:"max_tokens"`
		Seed      int    `json:"seed"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.MaxTokens <= 0 {
		http.Error(w, `{"error": {"message": "max_tokens is required"}}`, http.StatusBadRequest)
		return
	}
	total := tokensOf(req.MaxTokens, req.Seed)
	now := time.Now()
	f.mu.Lock()
	used, oldest := 0, time.Time{}
	for _, c := range f.accepted {
		if now.Sub(c.at) < f.window {
			used += c.tokens
			if oldest.IsZero() {
				oldest = c.at
			}
		}
	}
	over := used+total > f.limit
	if over {
		f.refused++
	} else {
		f.accepted = append(f.accepted, tokenCall{at: now, tokens: total, max: req.MaxTokens})
		used += total
		if oldest.IsZero() {
			oldest = now
		}
	}
	f.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-ratelimit-limit-tokens", strconv.Itoa(f.limit))
	w.Header().Set("x-ratelimit-remaining-tokens", strconv.Itoa(max(f.limit-used, 0)))
	w.Header().Set("x-ratelimit-reset-tokens", max(oldest.Add(f.window).Sub(now), time.Millisecond).String())
	if over {
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = fmt.Fprintf(w, `{"error": {"message": "Rate limit reached: limit %d, used %d, requested %d", "type": "tokens"}}`, f.limit, used, total)
		return
	}
	// A model takes a while, longer for longer answers.
	holdFor(5*time.Millisecond+time.Duration(total)*20*time.Microsecond, r)
	prompt := min(total, 12+req.Seed%20)
	_, _ = fmt.Fprintf(w, `{"id": "chatcmpl-%d", "object": "chat.completion", "model": %q, `+
		`"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}], `+
		`"usage": {"prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d}}`,
		req.Seed, req.Model, prompt, total-prompt, total)
}

func (f *tokenAPI) state() (accepted []tokenCall, refused int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.accepted), f.refused
}

const tokenBudgetRegistry = `
services:
  llm:
    kind: http
    base_url: %s
    timeout: 10s
    rate_limits:
      - {requests: 500, per: 10s}
      - {units: 20000, per: 10s, cost: "{{ .response.usage.total_tokens }}", reserve: "{{ .request.body.max_tokens }}"}
    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s}
features:
  chat:
    input:
      type: object
      required: [max_tokens, seed]
      properties: {max_tokens: {type: integer, minimum: 1}, seed: {type: integer}}
    steps:
      - name: answer
        service: llm
        request:
          method: POST
          path: /v1/chat/completions
          body:
            model: small
            max_tokens: "{{ .input.max_tokens }}"
            seed: "{{ .input.seed }}"
            messages: [{role: user, content: "Question {{ .input.seed }}"}]
`

// TestTokenBudgetAgainstAProvider runs 200 one-step jobs of mixed sizes (max_tokens from 100 to 590)
// on two workers against a provider that enforces 20,000 tokens per 10 s over the tokens its
// answers actually count. The service declares that budget in rate_limits: each call reserves its
// max_tokens and settles the answer's total_tokens. No call may be refused, and the calls must
// finish within 1.2x the ideal time.
//
// The ideal: with a sliding window of W tokens per P, N tokens cannot all be accepted in less than
// (ceil(N/W) - 1) × P from the first acceptance (any span shorter than k × P holds at most k × W
// tokens). N is what the provider counted (about 50,200 here: ideal 20 s).
//
// It runs alone, before the parallel tests: it measures time against a provider's window.
func TestTokenBudgetAgainstAProvider(t *testing.T) { //nolint:paralleltest // runs alone: see above
	const (
		budget = 20000
		window = 10 * time.Second
		jobs   = 200
	)
	f := newTokenAPI(t, budget, window)
	c := newCluster(t, fmt.Sprintf(tokenBudgetRegistry, f.srv.URL), "CAO_SHUTDOWN_GRACE=2s")
	api := c.startAPI()
	cl := c.client(api)

	// The jobs are queued before the workers start: the test measures the budget, not how fast
	// jobs can be posted.
	sizes := []int{100, 220, 340, 460, 590, 150, 280}
	ids := make([]string, jobs)
	for i := range ids {
		ids[i] = cl.createJob("chat", map[string]any{"max_tokens": sizes[i%len(sizes)], "seed": i})
	}
	c.startWorker()
	c.startWorker()
	for _, id := range ids {
		requireOneCleanAttempt(t, id, cl.waitJob(id, 60*time.Second, "COMPLETED", "FAILED", "CANCELLED"))
	}

	accepted, refused := f.state()
	require.Zero(t, refused, "calls refused with 429")
	require.Len(t, accepted, jobs, "one call per job")
	n, reserved := 0, 0
	for _, a := range accepted {
		n += a.tokens
		reserved += a.max
	}
	k := (n + budget - 1) / budget
	ideal := time.Duration(k-1) * window
	took := accepted[len(accepted)-1].at.Sub(accepted[0].at)
	t.Logf("%d calls, %d tokens counted by the provider (%d reserved as max_tokens), 0 refused; "+
		"first to last call %s, ideal (ceil(%d/%d)-1) x %s = %s: %.3fx",
		len(accepted), n, reserved, took.Round(time.Millisecond), n, budget, window, ideal, float64(took)/float64(ideal))
	require.GreaterOrEqual(t, took, ideal, "faster than the budget allows: the provider's window is broken")
	require.LessOrEqual(t, float64(took), 1.2*float64(ideal), "took %s, ideal %s", took, ideal)

	// Health shows the budget by CAO's count: the last window's calls, settled at their cost.
	rb := serviceHealth(t, cl, "llm")["rate_budgets"].([]any)
	require.Len(t, rb, 2, "the requests budget and the tokens budget, in the registry's order: %v", rb)
	require.Equal(t, "requests", rb[0].(map[string]any)["kind"])
	b := rb[1].(map[string]any)
	require.Equal(t, "units", b["kind"])
	require.Equal(t, float64(budget), b["limit"])
	require.Equal(t, float64(10), b["per_seconds"])
	require.Positive(t, b["used"], "the calls of the last window count")
	require.Equal(t, float64(budget)-b["used"].(float64), b["remaining"])
	require.Regexp(t, `cao_service_rate_budget_remaining\{budget="units 20000/10s",service="llm"\} \d+`, metricsText(t, cl))
}

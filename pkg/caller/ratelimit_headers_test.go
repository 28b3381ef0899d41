package caller

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseBudget(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	type lim = BudgetLimit
	tests := []struct {
		name   string
		header map[string][]string
		want   *Budget // nil: the answer reports no budget
	}{
		{
			name:   "nothing",
			header: map[string][]string{"Content-Type": {"application/json"}},
		},
		{
			name: "OpenAI form, requests spent, Go duration",
			header: map[string][]string{
				"x-ratelimit-limit-requests":     {"500"},
				"x-ratelimit-remaining-requests": {"0"},
				"x-ratelimit-reset-requests":     {"6m0s"},
				"x-ratelimit-limit-tokens":       {"90000"},
				"x-ratelimit-remaining-tokens":   {"89000"},
				"x-ratelimit-reset-tokens":       {"1.5s"},
			},
			want: &Budget{
				Limits: []lim{{"requests", 500, 0, 6 * time.Minute}, {"tokens", 90000, 89000, 1500 * time.Millisecond}},
				Hold:   6 * time.Minute,
			},
		},
		{
			name: "OpenAI form, tokens spent, milliseconds",
			header: map[string][]string{
				"x-ratelimit-remaining-requests": {"12"},
				"x-ratelimit-reset-requests":     {"1m30.5s"},
				"x-ratelimit-remaining-tokens":   {"0"},
				"x-ratelimit-reset-tokens":       {"20ms"},
			},
			want: &Budget{
				Limits: []lim{{"requests", -1, 12, 90500 * time.Millisecond}, {"tokens", -1, 0, 20 * time.Millisecond}},
				Hold:   20 * time.Millisecond,
			},
		},
		{
			name: "both spent: the later reset holds",
			header: map[string][]string{
				"x-ratelimit-remaining-requests": {"0"},
				"x-ratelimit-reset-requests":     {"2"},
				"x-ratelimit-remaining-tokens":   {"0"},
				"x-ratelimit-reset-tokens":       {"0.5"},
			},
			want: &Budget{
				Limits: []lim{{"requests", -1, 0, 2 * time.Second}, {"tokens", -1, 0, 500 * time.Millisecond}},
				Hold:   2 * time.Second,
			},
		},
		{
			name:   "spent without a reset: no hold",
			header: map[string][]string{"x-ratelimit-remaining-requests": {"0"}},
			want:   &Budget{Limits: []lim{{"requests", -1, 0, -1}}},
		},
		{
			name:   "remaining not a number: ignored",
			header: map[string][]string{"x-ratelimit-remaining-requests": {"lots"}, "x-ratelimit-reset-requests": {"1s"}},
		},
		{
			name: "X-RateLimit with a unix reset time",
			header: map[string][]string{
				"X-RateLimit-Limit":     {"60"},
				"X-RateLimit-Remaining": {"0"},
				"X-RateLimit-Reset":     {"1772600827"}, // now + 60s
			},
			want: &Budget{Limits: []lim{{"", 60, 0, time.Minute}}, Hold: time.Minute},
		},
		{
			name: "IETF draft -06 separate fields",
			header: map[string][]string{
				"RateLimit-Limit":     {"100"},
				"RateLimit-Remaining": {"0"},
				"RateLimit-Reset":     {"5"},
			},
			want: &Budget{Limits: []lim{{"", 100, 0, 5 * time.Second}}, Hold: 5 * time.Second},
		},
		{
			name:   "IETF draft -07 dictionary",
			header: map[string][]string{"RateLimit": {"limit=100, remaining=0, reset=5"}},
			want:   &Budget{Limits: []lim{{"", 100, 0, 5 * time.Second}}, Hold: 5 * time.Second},
		},
		{
			name:   "IETF draft -07 dictionary with room left",
			header: map[string][]string{"RateLimit": {"limit=100, remaining=50, reset=5"}},
			want:   &Budget{Limits: []lim{{"", 100, 50, 5 * time.Second}}},
		},
		{
			name:   "IETF structured list",
			header: map[string][]string{"RateLimit": {`"default";r=0;t=5`}},
			want:   &Budget{Limits: []lim{{"default", -1, 0, 5 * time.Second}}, Hold: 5 * time.Second},
		},
		{
			name: "IETF structured list, two policies on two lines, with RateLimit-Policy",
			header: map[string][]string{
				"RateLimit":        {`"day";r=100;t=3600`, `"burst";r=0;t=2`},
				"RateLimit-Policy": {`"day";q=1000;w=86400, "burst";q=10;w=1`},
			},
			want: &Budget{
				Limits: []lim{{"day", 1000, 100, time.Hour}, {"burst", 10, 0, 2 * time.Second}},
				Hold:   2 * time.Second,
			},
		},
		{
			name: "IETF structured list without t: the policy window bounds the reset",
			header: map[string][]string{
				"RateLimit":        {`default;r=0`},
				"RateLimit-Policy": {`default;q=100;w=60;qu="requests"`},
			},
			want: &Budget{Limits: []lim{{"default", 100, 0, time.Minute}}, Hold: time.Minute},
		},
		{
			name:   "IETF structured list with a partition key and quoted commas",
			header: map[string][]string{"RateLimit": {`"a,b";r=0;t=1.5;pk=:cHsdsRa894==:`}},
			want:   &Budget{Limits: []lim{{"a,b", -1, 0, 1500 * time.Millisecond}}, Hold: 1500 * time.Millisecond},
		},
		{
			name:   "a reset beyond an hour is capped",
			header: map[string][]string{"x-ratelimit-remaining-requests": {"0"}, "x-ratelimit-reset-requests": {"30h"}},
			want:   &Budget{Limits: []lim{{"requests", -1, 0, 30 * time.Hour}}, Hold: MaxRetryAfter},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			for k, vs := range tt.header {
				for _, v := range vs {
					h.Add(k, v)
				}
			}
			require.Equal(t, tt.want, ParseBudget(h, now))
		})
	}
}

func TestCallReportsBudget(t *testing.T) {
	t.Parallel()
	var status atomic.Int32
	var retryAfter atomic.Bool // answer with Retry-After instead of budget headers
	status.Store(http.StatusOK)
	b := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		if retryAfter.Load() {
			w.Header().Set("Retry-After", "7")
		} else {
			w.Header().Set("x-ratelimit-remaining-requests", "0")
			w.Header().Set("x-ratelimit-reset-requests", "2s")
		}
		w.WriteHeader(int(status.Load()))
		_, _ = w.Write([]byte(`{"ok": true}`))
	})
	b.svc.BudgetHeaders = true
	call := func() (Result, error) {
		return b.caller.Call(context.Background(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	}
	res, err := call()
	require.NoError(t, err)
	require.Equal(t, &Budget{Limits: []BudgetLimit{{"requests", -1, 0, 2 * time.Second}}, Hold: 2 * time.Second}, res.Budget)

	status.Store(http.StatusTooManyRequests)
	res, err = call()
	ce := requireError(t, err)
	require.Equal(t, 2*time.Second, res.Budget.Hold, "a failed answer reports its budget too")
	require.Equal(t, res.Budget, ce.Budget)
	require.Equal(t, 2*time.Second, ce.RetryAfter)

	// Retry-After counts on a 429 or 503 only.
	retryAfter.Store(true)
	for _, code := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		status.Store(int32(code))
		res, err = call()
		_ = requireError(t, err)
		require.Equal(t, &Budget{RetryAfter: 7 * time.Second}, res.Budget, "HTTP %d", code)
	}
	status.Store(http.StatusInternalServerError)
	res, err = call()
	_ = requireError(t, err)
	require.Nil(t, res.Budget, "a 500's Retry-After is for the step's own retry")

	status.Store(http.StatusTooManyRequests)
	retryAfter.Store(false)
	b.svc.BudgetHeaders = false
	res, err = call()
	ce = requireError(t, err)
	require.Nil(t, res.Budget, "budget_headers: false ignores the headers")
	require.Nil(t, ce.Budget)
}

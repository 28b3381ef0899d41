package caller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

const (
	secretToken  = "s3cr3t-token-value"
	secretHeader = "Bearer " + secretToken
)

// bundle is what most tests need: a caller, a service pointing at a test server, and that server.
type bundle struct {
	caller *Caller
	svc    *registry.Service
	srv    *httptest.Server
}

func setup(t *testing.T, h http.HandlerFunc) *bundle {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &bundle{
		caller: New(Config{}),
		svc:    httpService(srv.URL),
		srv:    srv,
	}
}

func httpService(baseURL string) *registry.Service {
	return &registry.Service{
		Name:             "llm",
		Kind:             registry.KindHTTP,
		BaseURL:          baseURL,
		Headers:          map[string]string{"Authorization": secretHeader},
		Timeout:          5 * time.Second,
		MaxResponseBytes: registry.DefaultMaxResponseBytes,
		Secrets:          []string{secretHeader, secretToken},
	}
}

// request compiles a step request the way the registry loader does.
func request(t *testing.T, method, path string, query, headers map[string]string, body any) *registry.Request {
	t.Helper()
	r := &registry.Request{Method: method, Path: path, Query: query, Headers: headers, Body: body}
	var err error
	r.PathTemplate, err = render.CompileString(path)
	require.NoError(t, err)
	if len(query) > 0 {
		r.QueryTemplates = map[string]*render.Template{}
		for k, v := range query {
			r.QueryTemplates[k], err = render.CompileString(v)
			require.NoError(t, err)
		}
	}
	if len(headers) > 0 {
		r.HeaderTemplates = map[string]*render.Template{}
		for k, v := range headers {
			r.HeaderTemplates[k], err = render.CompileString(v)
			require.NoError(t, err)
		}
	}
	if body != nil {
		r.BodyTemplate, err = render.Compile(body)
		require.NoError(t, err)
	}
	return r
}

func newStep(req *registry.Request) *registry.Step {
	return &registry.Step{Name: "research", Service: "llm", Queue: "default", Request: req, Timeout: 5 * time.Second}
}

func newCall(svc *registry.Service, step *registry.Step, input any, run, attempt int) Call {
	return Call{
		JobID:          "job-1",
		Step:           step,
		Service:        svc,
		Run:            run,
		Attempt:        attempt,
		IdempotencyKey: fmt.Sprintf("job-1/%s/%d", step.Name, run),
		Data: render.Data{
			Input:    input,
			Steps:    map[string]any{},
			JobID:    "job-1",
			StepName: step.Name,
			Attempt:  attempt,
			Run:      run,
		},
	}
}

func requireError(t *testing.T, err error) *Error {
	t.Helper()
	require.Error(t, err)
	var ce *Error
	require.True(t, errors.As(err, &ce), "error %T is not *caller.Error", err)
	return ce
}

func postStep(t *testing.T) *registry.Step {
	return newStep(request(t, "POST", "/chat", nil, nil, map[string]any{"q": "{{ .input.q }}"}))
}

func TestCallSuccessJSON(t *testing.T) {
	t.Parallel()

	var got *http.Request
	var gotBody map[string]any
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(context.Background())
		require.NoError(t, json.NewDecoder(r.Body).Decode(&gotBody))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"answer": 42, "list": [1, "two"]}`)
	})

	res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "hi"}, 1, 1))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.HTTPStatus)
	require.JSONEq(t, `{"answer": 42, "list": [1, "two"]}`, string(res.Output))
	require.GreaterOrEqual(t, res.Duration, time.Duration(0))

	require.Equal(t, http.MethodPost, got.Method)
	require.Equal(t, "/chat", got.URL.Path)
	require.Equal(t, "application/json", got.Header.Get("Content-Type"))
	require.Equal(t, "cao/1", got.Header.Get("User-Agent"))
	require.Equal(t, "job-1/research/1", got.Header.Get("Idempotency-Key"))
	require.Equal(t, secretHeader, got.Header.Get("Authorization"), "service headers reach the server")
	require.Equal(t, map[string]any{"q": "hi"}, gotBody)
}

func TestCallOutputShapes(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		body string
		want string
	}{
		{"non-JSON text becomes a JSON string", "hello <b>world</b>\n", `"hello <b>world</b>"`},
		{"empty body is null", "", `null`},
		{"whitespace body is null", "  \n", `null`},
		{"JSON scalar kept", "17", `17`},
		{"invalid JSON kept as text", `{"a": `, `"{\"a\":"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, tt.body)
			})
			res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
			require.NoError(t, err)
			require.True(t, json.Valid(res.Output), "output %q is not JSON", res.Output)
			require.JSONEq(t, tt.want, string(res.Output))
		})
	}
}

func TestCallStatusClassification(t *testing.T) {
	t.Parallel()

	tests := []struct {
		status    int
		retryable bool
	}{
		{400, false},
		{401, false},
		{403, false},
		{404, false},
		{422, false},
		{408, true},
		{425, true},
		{429, true},
		{500, true},
		{502, true},
		{503, true},
		{504, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, `{"error": "nope"}`)
			})
			res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
			ce := requireError(t, err)
			require.Equal(t, ClassHTTPStatus, ce.Class)
			require.Equal(t, tt.retryable, ce.Retryable)
			require.Equal(t, tt.status, ce.HTTPStatus)
			require.Equal(t, tt.status, res.HTTPStatus)
			require.Zero(t, ce.RetryAfter)
			require.Contains(t, ce.Message, fmt.Sprint(tt.status))
			require.Contains(t, ce.Message, `{"error": "nope"}`)
		})
	}
}

func TestCallRetryAfter(t *testing.T) {
	t.Parallel()

	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		status  int
		headers map[string]string
		want    time.Duration
	}{
		{"429 delta seconds", 429, map[string]string{"Retry-After": "2"}, 2 * time.Second},
		{"503 HTTP-date", 503, map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, 90 * time.Second},
		{"429 X-RateLimit-Reset seconds", 429, map[string]string{"X-RateLimit-Reset": "7"}, 7 * time.Second},
		{"429 X-RateLimit-Reset unix time", 429, map[string]string{"X-RateLimit-Reset": fmt.Sprint(now.Add(2 * time.Minute).Unix())}, 2 * time.Minute},
		{"429 OpenAI duration", 429, map[string]string{"X-Ratelimit-Reset-Requests": "6m0s"}, 6 * time.Minute},
		{"Retry-After wins over reset", 429, map[string]string{"Retry-After": "3", "X-RateLimit-Reset": "50"}, 3 * time.Second},
		{"capped at one hour", 429, map[string]string{"Retry-After": "999999"}, time.Hour},
		{"500 Retry-After honoured", 500, map[string]string{"Retry-After": "4"}, 4 * time.Second},
		{"500 ignores reset headers", 500, map[string]string{"X-RateLimit-Reset": "50"}, 0},
		{"429 garbage ignored", 429, map[string]string{"Retry-After": "soon"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.headers {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
			})
			b.caller = New(Config{Now: func() time.Time { return now }})
			_, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
			ce := requireError(t, err)
			require.True(t, ce.Retryable)
			require.Equal(t, tt.status, ce.HTTPStatus)
			require.Equal(t, tt.want, ce.RetryAfter)
		})
	}
}

func TestRetryAfterHeaders(t *testing.T) {
	t.Parallel()

	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		headers map[string]string
		want    time.Duration
	}{
		{"none", nil, 0},
		{"negative", map[string]string{"Retry-After": "-5"}, 0},
		{"date in the past", map[string]string{"Retry-After": now.Add(-time.Minute).Format(http.TimeFormat)}, 0},
		{"fractional seconds", map[string]string{"X-RateLimit-Reset": "0.5"}, 500 * time.Millisecond},
		{"milliseconds", map[string]string{"X-Ratelimit-Reset-Tokens": "20ms"}, 20 * time.Millisecond},
		{"compound duration", map[string]string{"X-Ratelimit-Reset-Requests": "1m30.5s"}, 90*time.Second + 500*time.Millisecond},
		{"unix milliseconds", map[string]string{"X-RateLimit-Reset": fmt.Sprint(now.Add(3 * time.Second).UnixMilli())}, 3 * time.Second},
		{"IETF RateLimit-Reset", map[string]string{"RateLimit-Reset": "12"}, 12 * time.Second},
		{"largest reset when none exhausted", map[string]string{"X-Ratelimit-Reset-Requests": "1s", "X-Ratelimit-Reset-Tokens": "6m0s"}, 6 * time.Minute},
		{"exhausted budget's reset", map[string]string{
			"X-Ratelimit-Reset-Requests": "2s", "X-Ratelimit-Remaining-Requests": "0",
			"X-Ratelimit-Reset-Tokens": "6m0s", "X-Ratelimit-Remaining-Tokens": "1000",
		}, 2 * time.Second},
		{"far unix time capped", map[string]string{"X-RateLimit-Reset": fmt.Sprint(now.Add(48 * time.Hour).Unix())}, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			for k, v := range tt.headers {
				h.Set(k, v)
			}
			require.Equal(t, tt.want, retryAfter(h, now, true))
		})
	}
}

func TestCallTimeout(t *testing.T) {
	t.Parallel()

	release := make(chan struct{})
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before srv.Close, so no handler stays blocked

	step := postStep(t)
	step.Timeout = 50 * time.Millisecond
	_, err := b.caller.Call(t.Context(), newCall(b.svc, step, map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassTimeout, ce.Class)
	require.True(t, ce.Retryable)
	require.Contains(t, ce.Message, "50ms")
}

func TestCallTimeoutWhileReadingBody(t *testing.T) {
	t.Parallel()

	release := make(chan struct{})
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"partial": `)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })

	step := postStep(t)
	step.Timeout = 50 * time.Millisecond
	_, err := b.caller.Call(t.Context(), newCall(b.svc, step, map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassTimeout, ce.Class)
	require.True(t, ce.Retryable)
}

func TestCallCancelled(t *testing.T) {
	t.Parallel()

	arrived := make(chan struct{})
	release := make(chan struct{})
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })

	ctx, cancel := context.WithCancelCause(t.Context())
	go func() {
		select {
		case <-arrived:
			cancel(errors.New("job cancelled by user"))
		case <-ctx.Done():
		}
	}()
	_, err := b.caller.Call(ctx, newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassCancelled, ce.Class)
	require.False(t, ce.Retryable)
	require.Contains(t, ce.Message, "job cancelled by user")
}

func TestCallAlreadyCancelled(t *testing.T) {
	t.Parallel()

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		t.Error("no request expected")
	})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := b.caller.Call(ctx, newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassCancelled, ce.Class)
	require.False(t, ce.Retryable)
}

func TestCallResponseTooLarge(t *testing.T) {
	t.Parallel()

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `"`+strings.Repeat("x", 5000)+`"`)
	})
	b.svc.MaxResponseBytes = 1024

	_, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassResponseTooLarge, ce.Class)
	require.False(t, ce.Retryable)
	require.Equal(t, http.StatusOK, ce.HTTPStatus)
	require.Contains(t, ce.Message, "1024 bytes")

	// Exactly at the limit is fine; Config overrides the service.
	b.caller = New(Config{MaxResponseBytes: 5002})
	res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	require.NoError(t, err)
	require.Len(t, res.Output, 5002)
}

func TestCallIdempotencyKeyStableAcrossAttempts(t *testing.T) {
	t.Parallel()

	var mu sync.Mutex
	var keys []string
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		n := len(keys)
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{}`)
	})
	step := postStep(t)

	_, err := b.caller.Call(t.Context(), newCall(b.svc, step, map[string]any{"q": "x"}, 2, 1))
	require.True(t, requireError(t, err).Retryable)
	_, err = b.caller.Call(t.Context(), newCall(b.svc, step, map[string]any{"q": "x"}, 2, 2))
	require.NoError(t, err)

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"job-1/research/2", "job-1/research/2"}, keys)
}

func TestCallRedactsSecretsInErrors(t *testing.T) {
	t.Parallel()

	for _, status := range []int{http.StatusUnauthorized, http.StatusInternalServerError} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(status)
				_, _ = fmt.Fprintf(w, `{"error": "bad credentials", "you_sent": %q, "token": %q}`,
					r.Header.Get("Authorization"), strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
			})
			_, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
			ce := requireError(t, err)
			require.Equal(t, status, ce.HTTPStatus)
			require.NotContains(t, ce.Message, secretToken)
			require.NotContains(t, ce.Error(), secretToken)
			require.Contains(t, ce.Message, "[REDACTED]")
			require.Contains(t, ce.Message, "bad credentials")
		})
	}
}

func TestCallErrorExcerptIsShort(t *testing.T) {
	t.Parallel()

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, strings.Repeat("é", 10000)+secretToken)
	})
	_, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Less(t, len(ce.Message), 700)
	require.True(t, strings.HasSuffix(ce.Message, "…"))
	require.NotContains(t, ce.Message, "s3cr")
	require.True(t, json.Valid(mustJSON(t, ce.Message)))
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

func TestCallRedactsSecretsInOutput(t *testing.T) {
	t.Parallel()

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, `{"echo": {"authorization": %q}, "n": 1}`, r.Header.Get("Authorization"))
	})
	res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	require.NoError(t, err)
	require.NotContains(t, string(res.Output), secretToken)
	require.JSONEq(t, `{"echo": {"authorization": "[REDACTED]"}, "n": 1}`, string(res.Output))
}

func TestCallRedactsEscapedSecretsInOutput(t *testing.T) {
	t.Parallel()

	const key = "k/ey+with<odd>chars"
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		// PHP-style escaping of "/" and HTML-safe escaping of < and > hide the raw secret text.
		_, _ = io.WriteString(w, `{"key": "k\/ey+with\u003codd\u003echars", "big": 12345678901234567890}`)
	})
	b.svc.Headers = map[string]string{"X-Api-Key": key}
	b.svc.Secrets = []string{key}
	res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	require.NoError(t, err)

	var out map[string]any
	dec := json.NewDecoder(strings.NewReader(string(res.Output)))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&out))
	require.Equal(t, "[REDACTED]", out["key"])
	require.Equal(t, json.Number("12345678901234567890"), out["big"], "numbers keep their precision")
}

func TestCallRedactedNonJSONOutput(t *testing.T) {
	t.Parallel()

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "token="+secretToken)
	})
	res, err := b.caller.Call(t.Context(), newCall(b.svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	require.NoError(t, err)
	require.JSONEq(t, `"token=[REDACTED]"`, string(res.Output))
}

func TestCallTemplateValuesArriveIntact(t *testing.T) {
	t.Parallel()

	var got map[string]any
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		require.NoError(t, json.NewDecoder(r.Body).Decode(&got))
		_, _ = io.WriteString(w, `{}`)
	})
	tricky := "He said \"hi\"\nthen left; naïve café 東京 🚀 </script> & \\ {{ not a template }}"
	body := map[string]any{
		"model": "small",
		"messages": []any{
			map[string]any{"role": "user", "content": "Market for {{ .input.name }}!"},
		},
		"raw":   "{{ .input.name }}",
		"items": "{{ .input.items }}",
		"n":     "{{ .input.n }}",
		"obj":   "{{ .input.obj }}",
		"job":   "{{ .job.id }}/{{ .step.name }}/{{ .step.attempt }}",
	}
	step := newStep(request(t, "POST", "/chat", nil, nil, body))
	input := map[string]any{
		"name":  tricky,
		"items": []any{"a", 2.5, true},
		"n":     7.0,
		"obj":   map[string]any{"k": "v"},
	}
	_, err := b.caller.Call(t.Context(), newCall(b.svc, step, input, 1, 3))
	require.NoError(t, err)

	require.Equal(t, "Market for "+tricky+"!", got["messages"].([]any)[0].(map[string]any)["content"])
	require.Equal(t, tricky, got["raw"])
	require.Equal(t, []any{"a", 2.5, true}, got["items"], "a single-expression template keeps the array")
	require.Equal(t, 7.0, got["n"], "a single-expression template keeps the number")
	require.Equal(t, map[string]any{"k": "v"}, got["obj"])
	require.Equal(t, "job-1/research/3", got["job"])
}

func TestCallQueryAndHeaders(t *testing.T) {
	t.Parallel()

	var got *http.Request
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(context.Background())
		_, _ = io.WriteString(w, `{}`)
	})
	b.svc.BaseURL = b.srv.URL + "/v1?api_key=base-key"
	b.svc.Secrets = append(b.svc.Secrets, "base-key")
	b.svc.Headers["X-Team"] = "service"
	step := newStep(request(t, "GET", "/search",
		map[string]string{"q": "{{ .input.q }}", "limit": "{{ .input.limit }}"},
		map[string]string{"X-Team": "step-{{ .input.limit }}", "X-Trace": "t"},
		nil))

	res, err := b.caller.Call(t.Context(), newCall(b.svc, step, map[string]any{"q": "a&b=c d/é", "limit": 5}, 1, 1))
	require.NoError(t, err)
	require.JSONEq(t, `{}`, string(res.Output))
	require.Equal(t, http.MethodGet, got.Method)
	require.Equal(t, "/v1/search", got.URL.Path)
	require.Equal(t, "a&b=c d/é", got.URL.Query().Get("q"))
	require.Equal(t, "5", got.URL.Query().Get("limit"))
	require.Equal(t, "base-key", got.URL.Query().Get("api_key"), "the base URL's query is kept")
	require.Equal(t, "step-5", got.Header.Get("X-Team"), "step headers override service headers")
	require.Equal(t, "t", got.Header.Get("X-Trace"))
	require.Equal(t, secretHeader, got.Header.Get("Authorization"))
	require.Empty(t, got.Header.Get("Content-Type"), "no body, no content type")
}

func TestCallPathValuesCannotEscapeHost(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		id   any
		want string // escaped path the server sees
	}{
		{"scheme-relative", "//evil.example/x", "/v1/items/%2F%2Fevil.example%2Fx/detail"},
		{"absolute URL", "http://evil.example/x", "/v1/items/http:%2F%2Fevil.example%2Fx/detail"},
		{"dot dot", "..", "/v1/items/%2E%2E/detail"},
		{"query injection", "a?admin=1#frag", "/v1/items/a%3Fadmin=1%23frag/detail"},
		{"user info", "x@evil.example", "/v1/items/x@evil.example/detail"},
		{"number", 12, "/v1/items/12/detail"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got *http.Request
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				got = r.Clone(context.Background())
				_, _ = io.WriteString(w, `{}`)
			})
			b.svc.BaseURL = b.srv.URL + "/v1/"
			step := newStep(request(t, "GET", "/items/{{ .input.id }}/detail", nil, nil, nil))
			_, err := b.caller.Call(t.Context(), newCall(b.svc, step, map[string]any{"id": tt.id}, 1, 1))
			require.NoError(t, err)
			require.Equal(t, strings.TrimPrefix(b.srv.URL, "http://"), got.Host)
			require.Equal(t, tt.want, got.URL.EscapedPath())
			require.Empty(t, got.URL.RawQuery)
		})
	}
}

func TestJoinURL(t *testing.T) {
	t.Parallel()

	svc := httpService("https://api.example.com/v1?key=k1")
	tests := []struct {
		path string
		want string
	}{
		{"/chat", "https://api.example.com/v1/chat?key=k1"},
		{"chat", "https://api.example.com/v1/chat?key=k1"},
		{"", "https://api.example.com/v1?key=k1"},
		{"//evil.example/x", "https://api.example.com/v1//evil.example/x?key=k1"},
		{"@evil.example", "https://api.example.com/v1/@evil.example?key=k1"},
		{"/x?a=1", "https://api.example.com/v1/x?key=k1&a=1"},
	}
	for _, tt := range tests {
		u, err := joinURL(svc, tt.path, nil)
		require.Nil(t, err, tt.path)
		require.Equal(t, tt.want, u.String(), tt.path)
		require.Equal(t, "api.example.com", u.Host)
	}

	_, err := joinURL(httpService("not a url"), "/x", nil)
	require.NotNil(t, err)
	require.Equal(t, ClassTemplate, err.Class)
	require.False(t, err.Retryable)
}

func TestCallTemplateErrors(t *testing.T) {
	t.Parallel()

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		t.Error("no request expected")
	})
	tests := []struct {
		name string
		req  *registry.Request
	}{
		{"missing key in body", request(t, "POST", "/x", nil, nil, map[string]any{"q": "{{ .input.missing }}"})},
		{"missing key in path", request(t, "POST", "/x/{{ .input.missing }}", nil, nil, nil)},
		{"header with newline", request(t, "POST", "/x", nil, map[string]string{"X-Q": "{{ .input.q }}"}, nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := b.caller.Call(t.Context(), newCall(b.svc, newStep(tt.req), map[string]any{"q": "a\r\nX-Evil: 1"}, 1, 1))
			ce := requireError(t, err)
			require.Equal(t, ClassTemplate, ce.Class)
			require.False(t, ce.Retryable)
		})
	}
}

func TestCallDefaultRequest(t *testing.T) {
	t.Parallel()

	var method, path, body string
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		method, path = r.Method, r.URL.Path
		raw, _ := io.ReadAll(r.Body)
		body = string(raw)
	})
	res, err := b.caller.Call(t.Context(), newCall(b.svc, newStep(nil), nil, 1, 1))
	require.NoError(t, err)
	require.Equal(t, "null", string(res.Output))
	require.Equal(t, http.MethodPost, method)
	require.Equal(t, "/", path)
	require.Equal(t, "{}", body)
}

func TestCallNetworkErrorRedactsURL(t *testing.T) {
	t.Parallel()

	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close() // nothing listens there any more

	svc := httpService(addr + "/v1?key=url-secret-key")
	svc.Secrets = append(svc.Secrets, "url-secret-key")
	_, err := New(Config{}).Call(t.Context(), newCall(svc, postStep(t), map[string]any{"q": "x"}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassNetwork, ce.Class)
	require.True(t, ce.Retryable)
	require.Zero(t, ce.HTTPStatus)
	require.NotContains(t, ce.Message, "url-secret-key")
	require.Contains(t, ce.Message, "/v1/chat")
}

func TestCallRedirects(t *testing.T) {
	t.Parallel()

	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the other host must not be called")
	}))
	t.Cleanup(other.Close)

	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/moved":
			http.Redirect(w, r, "/here", http.StatusFound)
		case "/away":
			http.Redirect(w, r, other.URL+"/steal", http.StatusTemporaryRedirect)
		case "/here":
			_, _ = io.WriteString(w, `{"ok": true}`)
		}
	})
	// Ports differ, so the other server is another host for the redirect policy.
	res, err := b.caller.Call(t.Context(), newCall(b.svc, newStep(request(t, "GET", "/moved", nil, nil, nil)), nil, 1, 1))
	require.NoError(t, err)
	require.JSONEq(t, `{"ok": true}`, string(res.Output))

	_, err = b.caller.Call(t.Context(), newCall(b.svc, newStep(request(t, "GET", "/away", nil, nil, nil)), nil, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassHTTPStatus, ce.Class)
	require.False(t, ce.Retryable)
	require.Equal(t, http.StatusTemporaryRedirect, ce.HTTPStatus)
}

func TestProbe(t *testing.T) {
	t.Parallel()

	var auth string
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		if r.Method == http.MethodGet && r.URL.Path == "/models" {
			_, _ = io.WriteString(w, `{"data": []}`)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	})

	b.svc.Health = &registry.HealthProbe{Path: "/models"}
	require.NoError(t, b.caller.Probe(t.Context(), b.svc))
	require.Equal(t, secretHeader, auth)

	b.svc.Health = &registry.HealthProbe{Method: "GET", Path: "/broken"}
	ce := requireError(t, b.caller.Probe(t.Context(), b.svc))
	require.Equal(t, http.StatusInternalServerError, ce.HTTPStatus)

	b.svc.Health = nil
	require.NoError(t, b.caller.Probe(t.Context(), b.svc), "no probe configured")
	require.NoError(t, b.caller.Probe(t.Context(), mockService()), "mock services are always healthy")
}

func mockService() *registry.Service {
	return &registry.Service{Name: "sim", Kind: registry.KindMock, Timeout: time.Second}
}

func mockStep(spec registry.MockSpec) *registry.Step {
	return &registry.Step{Name: "summary", Service: "sim", Queue: "default", Timeout: time.Second, Mock: spec}
}

func TestMockFailTimesThenSuccess(t *testing.T) {
	t.Parallel()

	c := New(Config{})
	svc := mockService()
	step := mockStep(registry.MockSpec{FailTimes: 2})
	for attempt := 1; attempt <= 2; attempt++ {
		_, err := c.Call(t.Context(), newCall(svc, step, map[string]any{"q": "x"}, 1, attempt))
		ce := requireError(t, err)
		require.Equal(t, ClassMock, ce.Class)
		require.True(t, ce.Retryable)
		require.Equal(t, fmt.Sprintf("mock failure (attempt %d of fail_times 2)", attempt), ce.Message)
	}
	res, err := c.Call(t.Context(), newCall(svc, step, map[string]any{"q": "x"}, 1, 3))
	require.NoError(t, err)
	require.Zero(t, res.HTTPStatus)
	require.JSONEq(t, `{"service": "sim", "step": "summary", "attempt": 3, "run": 1,
		"idempotency_key": "job-1/summary/1", "input": {"q": "x"}}`, string(res.Output))
}

func TestMockEchoAndOutputTemplate(t *testing.T) {
	t.Parallel()

	c := New(Config{})
	step := mockStep(registry.MockSpec{})
	step.Request = request(t, "POST", "/", nil, nil, map[string]any{"prompt": "Hi {{ .input.q }}", "n": "{{ .input.n }}"})
	res, err := c.Call(t.Context(), newCall(mockService(), step, map[string]any{"q": "x", "n": 2}, 1, 1))
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(res.Output, &out))
	require.Equal(t, map[string]any{"prompt": "Hi x", "n": 2.0}, out["echo"])

	tmpl, err := render.Compile(map[string]any{"summary": "done: {{ .input.q }}", "items": "{{ .input.items }}"})
	require.NoError(t, err)
	step = mockStep(registry.MockSpec{OutputTemplate: tmpl})
	res, err = c.Call(t.Context(), newCall(mockService(), step, map[string]any{"q": "x", "items": []any{1, 2}}, 1, 1))
	require.NoError(t, err)
	require.JSONEq(t, `{"summary": "done: x", "items": [1, 2]}`, string(res.Output))
}

func TestMockFailureRate(t *testing.T) {
	t.Parallel()

	step := mockStep(registry.MockSpec{FailureRate: 0.5})
	failing := New(Config{Rand: func() float64 { return 0.49 }})
	_, err := failing.Call(t.Context(), newCall(mockService(), step, nil, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassMock, ce.Class)
	require.True(t, ce.Retryable)

	passing := New(Config{Rand: func() float64 { return 0.5 }})
	_, err = passing.Call(t.Context(), newCall(mockService(), step, nil, 1, 1))
	require.NoError(t, err)
}

func TestMockLatency(t *testing.T) {
	t.Parallel()

	c := New(Config{})

	slow := mockStep(registry.MockSpec{Latency: time.Hour})
	slow.Timeout = 50 * time.Millisecond
	_, err := c.Call(t.Context(), newCall(mockService(), slow, nil, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassTimeout, ce.Class)
	require.True(t, ce.Retryable)

	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(errors.New("lease lost"))
	slow.Timeout = time.Hour
	_, err = c.Call(ctx, newCall(mockService(), slow, nil, 1, 1))
	ce = requireError(t, err)
	require.Equal(t, ClassCancelled, ce.Class)
	require.False(t, ce.Retryable)
	require.Contains(t, ce.Message, "lease lost")

	quick := mockStep(registry.MockSpec{Latency: time.Millisecond})
	res, err := c.Call(t.Context(), newCall(mockService(), quick, nil, 1, 1))
	require.NoError(t, err)
	require.GreaterOrEqual(t, res.Duration, time.Millisecond)
}

func TestMockCancelledDuringLatency(t *testing.T) {
	t.Parallel()

	c := New(Config{})
	step := mockStep(registry.MockSpec{Latency: time.Hour})
	step.Timeout = time.Hour
	ctx, cancel := context.WithCancelCause(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, newCall(mockService(), step, nil, 1, 1))
		done <- err
	}()
	cancel(errors.New("shutdown"))
	ce := requireError(t, <-done)
	require.Equal(t, ClassCancelled, ce.Class)
	require.Contains(t, ce.Message, "shutdown")
}

func TestInvalidCall(t *testing.T) {
	t.Parallel()

	_, err := New(Config{}).Call(t.Context(), Call{})
	ce := requireError(t, err)
	require.Equal(t, ClassTemplate, ce.Class)
	require.False(t, ce.Retryable)
}

package httpapi

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/testinfra"
)

// asynqmonOver is a real asynqmon handler on the Redis at addr/db, mounted under /monitoring, closed
// at cleanup.
func asynqmonOver(t *testing.T, addr string, db int) *asynqmon.HTTPHandler {
	t.Helper()
	h := asynqmon.New(asynqmon.Options{RootPath: "/monitoring", RedisConnOpt: asynq.RedisClientOpt{Addr: addr, DB: db}})
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// monitoringServer serves MonitoringErrors(h) on a real socket and returns its URL and log.
func monitoringServer(t *testing.T, h http.Handler) (string, *testinfra.LogBuffer) {
	t.Helper()
	logs := &testinfra.LogBuffer{}
	srv := httptest.NewServer(MonitoringErrors(h, slog.New(slog.NewTextHandler(logs, nil))))
	t.Cleanup(srv.Close)
	return srv.URL, logs
}

type monitoringAnswer struct {
	status int
	header http.Header
	body   []byte
}

func monitoringDo(t *testing.T, method, url string) monitoringAnswer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return monitoringAnswer{status: resp.StatusCode, header: resp.Header, body: body}
}

// requireMonitoringEnvelope checks a is the error envelope with status and code and returns its message.
func requireMonitoringEnvelope(t *testing.T, a monitoringAnswer, status int, code string) string {
	t.Helper()
	require.Equal(t, status, a.status, "%s", a.body)
	require.Equal(t, "application/json; charset=utf-8", a.header.Get("Content-Type"))
	require.Equal(t, strconv.Itoa(len(a.body)), a.header.Get("Content-Length"))
	var env struct {
		Success *bool `json:"success"`
		Error   struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(a.body, &env), "%s", a.body)
	require.NotNil(t, env.Success)
	require.False(t, *env.Success)
	require.Equal(t, code, env.Error.Code)
	require.NotEmpty(t, env.Error.Message)
	require.LessOrEqual(t, len(env.Error.Message), MonitoringErrorMessageMax)
	return env.Error.Message
}

// asynqmon's own error answers, over a real Redis, are envelopes; its successful answers are not
// touched.
func TestMonitoringErrorsOverAsynqmon(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	mon := asynqmonOver(t, rdb.Client.Options().Addr, rdb.DB)
	base, logs := monitoringServer(t, mon)
	plain := httptest.NewServer(mon)
	t.Cleanup(plain.Close)

	// Success: the queue list (JSON) and the UI page (HTML), byte for byte as asynqmon answers them.
	for _, path := range []string{"/monitoring/api/queues", "/monitoring/"} {
		got := monitoringDo(t, http.MethodGet, base+path)
		want := monitoringDo(t, http.MethodGet, plain.URL+path)
		require.Equal(t, http.StatusOK, got.status, "%s: %s", path, got.body)
		require.Equal(t, want.header.Get("Content-Type"), got.header.Get("Content-Type"))
		require.Equal(t, string(want.body), string(got.body), path)
	}

	// 404 with asynqmon's text: deleting a queue that does not exist.
	a := monitoringDo(t, http.MethodDelete, base+"/monitoring/api/queues/nosuchqueue")
	msg := requireMonitoringEnvelope(t, a, http.StatusNotFound, "not_found")
	require.Contains(t, msg, "queue")

	// 405 without a body: gorilla/mux's answer to a method the route does not take.
	a = monitoringDo(t, http.MethodPost, base+"/monitoring/api/queues")
	require.Equal(t, "Method Not Allowed", requireMonitoringEnvelope(t, a, http.StatusMethodNotAllowed, "method_not_allowed"))

	// asynqmon answers 500 for a queue that does not exist: a fixed message, the detail in the log.
	a = monitoringDo(t, http.MethodGet, base+"/monitoring/api/queues/nosuchqueue")
	require.Equal(t, MonitoringServerErrorMessage, requireMonitoringEnvelope(t, a, http.StatusInternalServerError, "internal_error"))
	require.Contains(t, logs.String(), "queue monitor error")
	require.Contains(t, logs.String(), "nosuchqueue")

	// asynqmon takes no HEAD (the router serves HEAD as GET, see TestHeadOverRouter): its 405 has no
	// body, and the envelope's headers say so.
	a = monitoringDo(t, http.MethodHead, base+"/monitoring/api/queues")
	require.Equal(t, http.StatusMethodNotAllowed, a.status)
	require.Equal(t, "application/json; charset=utf-8", a.header.Get("Content-Type"))
	require.Empty(t, a.body)
}

// With Redis unreachable asynqmon answers 500 with the Redis error, address included: the client gets
// the fixed message and the address goes to the log only.
func TestMonitoringErrorsHideRedisErrors(t *testing.T) {
	t.Parallel()
	addr := testinfra.RefusedAddr(t)
	mon := asynqmonOver(t, addr, 0)
	base, logs := monitoringServer(t, mon)

	plain := httptest.NewServer(mon)
	t.Cleanup(plain.Close)
	raw := monitoringDo(t, http.MethodGet, plain.URL+"/monitoring/api/queues")
	require.Equal(t, http.StatusInternalServerError, raw.status)
	require.Contains(t, string(raw.body), addr, "asynqmon's own answer names the address")

	a := monitoringDo(t, http.MethodGet, base+"/monitoring/api/queues")
	require.Equal(t, MonitoringServerErrorMessage, requireMonitoringEnvelope(t, a, http.StatusInternalServerError, "internal_error"))
	require.NotContains(t, string(a.body), addr)
	require.NotContains(t, string(a.body), "dial")
	require.Contains(t, logs.String(), addr)
	require.Contains(t, logs.String(), "level=WARN")
}

// 4xx texts are trimmed to their first line and MonitoringErrorMessageMax bytes (on a character
// boundary), network details are never returned, JSON errors pass through, and a successful answer
// streams: the client reads its first part while the handler still runs.
func TestMonitoringErrorsRules(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/long", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, strings.Repeat("é", 400)+"\nsecond line", http.StatusBadRequest)
	})
	mux.HandleFunc("/address", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "queue x: dial tcp 10.1.2.3:6379: connection refused", http.StatusNotFound)
	})
	mux.HandleFunc("/json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"success":false,"error":{"code":"forbidden","message":"admin only"}}`)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		<-release
		_, _ = io.WriteString(w, "second\n")
	})
	base, _ := monitoringServer(t, mux)

	msg := requireMonitoringEnvelope(t, monitoringDo(t, http.MethodGet, base+"/long"), http.StatusBadRequest, "bad_request")
	require.True(t, utf8.ValidString(msg))
	require.Equal(t, strings.Repeat("é", MonitoringErrorMessageMax/2), msg)

	msg = requireMonitoringEnvelope(t, monitoringDo(t, http.MethodGet, base+"/address"), http.StatusNotFound, "not_found")
	require.Equal(t, "Not Found", msg)

	a := monitoringDo(t, http.MethodGet, base+"/json")
	require.Equal(t, http.StatusForbidden, a.status)
	require.JSONEq(t, `{"success":false,"error":{"code":"forbidden","message":"admin only"}}`, string(a.body))

	resp, err := http.Get(base + "/stream")
	require.NoError(t, err)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "first\n", line)
	close(release)
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, "second\n", string(rest))
}

// HEAD is served wherever GET is, over the real router: the headers of the GET answer (an envelope's
// for errors, asynqmon's included) and no body.
func TestHeadOverRouter(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	mon := MonitoringErrors(asynqmonOver(t, rdb.Client.Options().Addr, rdb.DB), nil)
	s := New(Deps{Metrics: metrics.New(func() float64 { return 0 })}, Options{Monitoring: mon})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		path   string
		status int
		ct     string
	}{
		{"/health", http.StatusOK, "application/json; charset=utf-8"},
		{"/api/v1/no-such-route", http.StatusNotFound, "application/json; charset=utf-8"},
		{"/monitoring/api/queues", http.StatusOK, ""},
		{"/monitoring/api/queues/nosuchqueue", http.StatusInternalServerError, "application/json; charset=utf-8"},
	} {
		get := monitoringDo(t, http.MethodGet, srv.URL+tc.path)
		head := monitoringDo(t, http.MethodHead, srv.URL+tc.path)
		require.Equal(t, tc.status, get.status, "GET %s: %s", tc.path, get.body)
		require.Equal(t, tc.status, head.status, "HEAD %s", tc.path)
		require.NotEmpty(t, get.body, "GET %s", tc.path)
		require.Empty(t, head.body, "HEAD %s", tc.path)
		require.Equal(t, get.header.Get("Content-Type"), head.header.Get("Content-Type"), "HEAD %s", tc.path)
		if tc.ct != "" {
			require.Equal(t, tc.ct, head.header.Get("Content-Type"), "HEAD %s", tc.path)
			require.Equal(t, get.header.Get("Content-Length"), head.header.Get("Content-Length"), "HEAD %s", tc.path)
		}
	}
}

func TestStatusErrorCode(t *testing.T) {
	t.Parallel()
	for status, code := range map[int]string{
		400: "bad_request", 404: "not_found", 405: "method_not_allowed", 431: "headers_too_large",
		500: "internal_error", 501: "not_implemented", 502: "internal_error", 505: "http_version_not_supported",
		418: "im_a_teapot", 410: "gone", 412: "precondition_failed",
	} {
		require.Equal(t, code, StatusErrorCode(status), "%d", status)
	}
}

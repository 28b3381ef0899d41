// Package e2e runs CAO as real cao-api and cao-worker processes against real Postgres and Redis.
package e2e

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const dagRegistry = `
services:
  fast:
    kind: mock
    latency: 30ms
  slow:
    kind: mock
    latency: 120ms
    max_concurrency: 4
features:
  report:
    input:
      type: object
      required: [topic]
      properties:
        topic: {type: string, minLength: 1, maxLength: 50}
        pages: {type: integer, minimum: 1}
    steps:
      - {name: research, service: slow, queue: heavy}
      - {name: draft, service: fast, queue: medium, needs: [research]}
      - {name: charts, service: fast, needs: [research]}
      - {name: publish, service: fast, needs: [draft, charts]}
`

func TestSplitSystemRunsDAGAcrossTwoWorkers(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry)
	api := c.startAPI()
	w := c.startWorker("CAO_WORKER_CONCURRENCY=4", "CAO_METRICS_ADDR=127.0.0.1:0")
	metricsAddr := c.logValue(w, `msg="worker metrics listening" addr=(\S+)`, 10*time.Second)
	c.startWorker("CAO_WORKER_CONCURRENCY=4")
	cl := c.client(api)

	var ids []string
	for i := range 12 {
		ids = append(ids, cl.createJob("report", map[string]any{"topic": fmt.Sprintf("t%d", i)}))
	}
	workers := map[string]bool{}
	for _, id := range ids {
		j := cl.waitJob(id, 60*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "COMPLETED", j["status"], "job %s", id)
		st := steps(j)
		require.Len(t, st, 4)
		for name, s := range st {
			require.Equal(t, "SUCCEEDED", s["status"], name)
			require.EqualValues(t, 1, s["attempts"])
			started := parseTime(t, s["started_at"])
			for _, need := range s["needs"].([]any) {
				finished := parseTime(t, st[need.(string)]["finished_at"])
				require.False(t, started.Before(finished), "%s started before its need %s finished", name, need)
			}
			for _, a := range s["attempt_history"].([]any) {
				workers[a.(map[string]any)["worker_id"].(string)] = true
			}
		}
		require.Contains(t, j["output"], "publish")
	}
	require.Len(t, workers, 2, "both workers ran steps: %v", workers)

	// A worker's own metrics endpoint counts its attempts.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	require.NoError(t, err)
	metrics, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Contains(t, string(metrics), `cao_step_attempts_total{outcome="succeeded",service="fast"}`)

	// The list endpoint pages through them with a cursor.
	seen := map[string]bool{}
	cursor := ""
	for page := 0; page < 10; page++ {
		code, body := cl.do("GET", "/api/v1/jobs?feature=report&status=COMPLETED&limit=5&cursor="+cursor, nil)
		require.Equal(t, http.StatusOK, code, "%v", body)
		for _, j := range body["jobs"].([]any) {
			seen[j.(map[string]any)["id"].(string)] = true
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Len(t, seen, len(ids))

	code, body := cl.do("GET", "/api/v1/features", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, fmt.Sprint(body), "research")

	code, body = cl.do("GET", "/api/v1/health/services", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Equal(t, "ok", body["status"])
}

func TestAPIRejectsBadInputWithContractErrors(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry, "CAO_MAX_BODY_BYTES=2048")
	api := c.startAPI()
	cl := c.client(api)
	id := cl.createJob("report", map[string]any{"topic": "x"})

	cases := []struct {
		name, method, path string
		body               any
		hdr                []string
		status             int
		code               string
	}{
		{"malformed json", "POST", "/api/v1/jobs", `{"feature_name": "report",`, nil, 400, "invalid_json"},
		{"empty body", "POST", "/api/v1/jobs", ``, nil, 400, "invalid_json"},
		{"not an object", "POST", "/api/v1/jobs", `[1,2]`, nil, 400, "invalid_request"},
		{"missing feature", "POST", "/api/v1/jobs", `{"input_data": {}}`, nil, 400, "invalid_request"},
		{"feature wrong type", "POST", "/api/v1/jobs", `{"feature_name": 5}`, nil, 400, "invalid_request"},
		{"unknown field", "POST", "/api/v1/jobs", `{"feature_name": "report", "input": {}}`, nil, 400, "invalid_request"},
		{"unknown feature", "POST", "/api/v1/jobs", `{"feature_name": "nope", "input_data": {}}`, nil, 404, "feature_not_found"},
		{"wrong input type", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": 7, "pages": "x"}}`, nil, 422, "invalid_input"},
		{"missing required input", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {}}`, nil, 422, "invalid_input"},
		{"input not object", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": "x"}`, nil, 422, "invalid_input"},
		{"NUL in an input string", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": "a\u0000b"}}`, nil, 422, "invalid_input"},
		{"NUL in an input key", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": "x", "k\u0000": 1}}`, nil, 422, "invalid_input"},
		{"number out of range", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": "x", "n": 1e999999}}`, nil, 422, "invalid_input"},
		{"too large", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": "` + strings.Repeat("x", 4000) + `"}}`, nil, 413, "body_too_large"},
		{"wrong content type", "POST", "/api/v1/jobs", `{}`, []string{"Content-Type", "text/plain"}, 415, "unsupported_media_type"},
		{"bad job id", "GET", "/api/v1/jobs/not-a-uuid", nil, nil, 400, "invalid_job_id"},
		{"unknown job", "GET", "/api/v1/jobs/6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11", nil, nil, 404, "job_not_found"},
		{"unknown job events", "GET", "/api/v1/jobs/6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11/events", nil, nil, 404, "job_not_found"},
		{"bad status filter", "GET", "/api/v1/jobs?status=DONE", nil, nil, 400, "invalid_query"},
		{"bad limit", "GET", "/api/v1/jobs?limit=0", nil, nil, 400, "invalid_query"},
		{"bad cursor", "GET", "/api/v1/jobs?cursor=bm90LWEtY3Vyc29y", nil, nil, 400, "invalid_query"},
		{"forged cursor time", "GET", "/api/v1/jobs?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("-9223372036854775808|6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11")), nil, nil, 400, "invalid_query"},
		{"NUL in feature filter", "GET", "/api/v1/jobs?feature=%00", nil, nil, 400, "invalid_query"},
		{"invalid UTF-8 in feature filter", "GET", "/api/v1/jobs?feature=%ff", nil, nil, 400, "invalid_query"},
		{"invalid UTF-8 in Idempotency-Key", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": "x"}}`, []string{"Idempotency-Key", "k\xff\xfe"}, 400, "invalid_request"},
		{"bad after_seq", "GET", "/api/v1/jobs/" + id + "/events?after_seq=-1", nil, nil, 400, "invalid_query"},
		{"resume unknown job", "POST", "/api/v1/jobs/6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11/resume", nil, nil, 404, "job_not_found"},
		{"resume running job", "POST", "/api/v1/jobs/" + id + "/resume", `{}`, nil, 409, "job_not_resumable"},
		{"resume malformed", "POST", "/api/v1/jobs/" + id + "/resume", `{"from_step":`, nil, 400, "invalid_json"},
		{"cancel bad id", "POST", "/api/v1/jobs/123/cancel", nil, nil, 400, "invalid_job_id"},
		{"unknown route", "GET", "/api/v1/nope", nil, nil, 404, "not_found"},
		{"wrong method", "DELETE", "/api/v1/jobs", nil, nil, 405, "method_not_allowed"},
		{"idempotency key too long", "POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": "x"}}`, []string{"Idempotency-Key", strings.Repeat("k", 300)}, 400, "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl := &client{t: t, base: cl.base}
			code, body := cl.do(tc.method, tc.path, tc.body, tc.hdr...)
			require.Equal(t, tc.status, code, "%v", body)
			require.Equal(t, false, body["success"], "%v", body)
			e := body["error"].(map[string]any)
			require.Equal(t, tc.code, e["code"], "%v", body)
			require.NotEmpty(t, e["message"])
		})
	}

	// invalid_input names each field.
	_, body := cl.do("POST", "/api/v1/jobs", `{"feature_name": "report", "input_data": {"topic": 7, "pages": 0}}`)
	details := fmt.Sprint(body["error"].(map[string]any)["details"])
	require.Contains(t, details, "topic")
	require.Contains(t, details, "pages")

	// Cancel, then cancel again: 409.
	code, _ := cl.do("POST", "/api/v1/jobs/"+id+"/cancel", nil)
	require.Equal(t, http.StatusAccepted, code)
	code, body = cl.do("POST", "/api/v1/jobs/"+id+"/cancel", nil)
	require.Equal(t, http.StatusConflict, code, "%v", body)
}

func TestAPIKeysRequired(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry)
	// Without keys and without CAO_AUTH=off, serve refuses to start.
	p := c.start("api", bin.api, "CAO_AUTH=on", "CAO_HTTP_ADDR="+freeAddr(t))
	require.Error(t, p.wait(t, 30*time.Second))
	c.waitLog(p, "CAO_API_KEYS", time.Second)

	api := c.startAPI("CAO_API_KEYS=k1,k2")
	cl := c.client(api)
	code, body := cl.do("GET", "/api/v1/jobs", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, "unauthorized", body["error"].(map[string]any)["code"])
	code, _ = cl.do("GET", "/api/v1/jobs", nil, "Authorization", "Bearer k2")
	require.Equal(t, http.StatusOK, code)
	code, _ = cl.do("GET", "/api/v1/jobs", nil, "X-API-Key", "k1")
	require.Equal(t, http.StatusOK, code)
	code, _ = cl.do("GET", "/health", nil)
	require.Equal(t, http.StatusOK, code, "liveness needs no key")

	// asynqmon cannot send headers: the key given once in the URL is kept in a cookie for /monitoring.
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	browser := &http.Client{Jar: jar}
	get := func(path string) int {
		resp, err := browser.Get(cl.base + path)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusUnauthorized, get("/monitoring/api/queues"))
	require.Equal(t, http.StatusUnauthorized, get("/monitoring/?api_key=wrong"))
	require.Equal(t, http.StatusOK, get("/monitoring/?api_key=k1"))
	require.Equal(t, http.StatusOK, get("/monitoring/api/queues"), "the UI's own calls carry the cookie")
	code, _ = cl.do("GET", "/monitoring/api/queues", nil)
	require.Equal(t, http.StatusUnauthorized, code, "no cookie, no key")
}

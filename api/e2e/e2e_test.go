// Package e2e runs CAO as real cao-api and cao-worker processes against real Postgres and Redis.
package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	caoclient "github.com/cao-run/cao/pkg/client"
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

	// The list endpoint pages through them with a cursor (the Go client's iterator follows it).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for j, err := range cl.sdk().All(ctx, caoclient.ListOptions{Feature: "report", Status: caoclient.JobCompleted, Limit: 5}) {
		require.NoError(t, err)
		require.False(t, seen[j.ID], "no job twice across pages")
		seen[j.ID] = true
	}
	require.Len(t, seen, len(ids))

	features, err := cl.sdk().Features(ctx)
	require.NoError(t, err)
	require.Contains(t, fmt.Sprint(features), "research")

	code, body := cl.do("GET", "/api/v1/health/services", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Equal(t, "ok", body["status"])
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

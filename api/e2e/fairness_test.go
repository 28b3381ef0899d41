package e2e

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// fairRegistry has one saturated service: 4 calls at once, 200 ms each.
const fairRegistry = `
services:
  llm:
    kind: mock
    latency: 200ms
    max_concurrency: 4
features:
  ask:
    steps:
      - {name: answer, service: llm}
`

// Tenant A posts 2,000 jobs on a service that runs 20 calls a second; tenant B then posts one. In
// first-come order B's step would wait behind A's for over a minute and a half; shared round-robin
// by tenant, it starts within 2 s.
//
// It runs alone, before the parallel tests (it loads the machine with 2,000 jobs and 32 posting
// clients, and measures a latency).
func TestFairSharingBetweenTenants(t *testing.T) { //nolint:paralleltest // runs alone: see above
	c := newCluster(t, fairRegistry)
	api := c.startAPI(tenantKeys...)
	c.startWorker(tenantKeys...)
	cl := c.client(api)
	acme, globex := as{cl, "key-acme"}, as{cl, "key-globex"}

	const backlog = 2000
	var (
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= backlog {
				if code, _ := acme.create("ask", map[string]any{"q": "a"}); code != http.StatusAccepted {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, failed.Load(), "every job of tenant A accepted")

	posted := time.Now()
	code, body := globex.create("ask", map[string]any{"q": "b"})
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	id := body["job_id"].(string)

	var started time.Time
	testinfra.Eventually(t, 60*time.Second, func() bool {
		_, body := globex.do("GET", "/api/v1/jobs/"+id, nil)
		s := body["job"].(map[string]any)["steps"].([]any)[0].(map[string]any)
		if at, ok := s["started_at"].(string); ok && at != "" {
			started = parseTime(t, at)
			return true
		}
		return false
	}, "tenant B's step starts")
	wait := started.Sub(posted)

	// A's backlog was still there: B did not just come after it.
	_, body = acme.do("GET", "/api/v1/jobs?status=PENDING&limit=200", nil)
	require.Len(t, body["jobs"], 200, "tenant A still has a backlog when B's step starts")

	// A waiting step says why.
	waiting := body["jobs"].([]any)[199].(map[string]any)["id"].(string)
	_, body = acme.do("GET", "/api/v1/jobs/"+waiting, nil)
	s := body["job"].(map[string]any)["steps"].([]any)[0].(map[string]any)
	w, ok := s["waiting"].(map[string]any)
	require.True(t, ok, "a parked step says why it waits: %v", s)
	require.Equal(t, "slot", w["reason"])
	require.Equal(t, "llm", w["service"])
	require.Regexp(t, `^waiting for a slot on llm: [0-4]/4 in use, \d+ steps parked, served round-robin by tenant$`, w["message"])
	t.Logf("tenant B's step started %s after it was posted, behind a backlog of %d jobs of tenant A", wait.Round(time.Millisecond), backlog)
	require.Less(t, wait, 2*time.Second, "B's step starts within 2 s")

	// Health and metrics show who waits, per tenant.
	root := as{cl, "key-root"}
	code, body = root.do("GET", "/api/v1/health/services", nil)
	require.Contains(t, []int{http.StatusOK, http.StatusServiceUnavailable}, code, "%v", body)
	llm := body["services"].(map[string]any)["llm"].(map[string]any)
	require.Greater(t, llm["waiting"].(map[string]any)["acme"], float64(100), "tenant A's parked steps in health: %v", llm)
	require.Equal(t, float64(4), llm["leases_in_use"], "the service is kept saturated: %v", llm)
	require.Regexp(t, `cao_service_waiting_steps\{service="llm",tenant="acme"\} \d{3,}`, metricsText(t, cl, "key-root"))
}

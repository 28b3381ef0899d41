package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// tenantKeys configure two tenants and an admin for the tests below.
var tenantKeys = []string{"CAO_API_KEYS=acme:key-acme,globex:key-globex", "CAO_ADMIN_KEYS=ops:key-root"}

// as sends requests with one key.
type as struct {
	cl  *client
	key string
}

func (a as) do(method, path string, body any, hdr ...string) (int, map[string]any) {
	a.cl.t.Helper()
	return a.cl.do(method, path, body, append([]string{"Authorization", "Bearer " + a.key}, hdr...)...)
}

func (a as) create(feature string, input any, hdr ...string) (int, map[string]any) {
	a.cl.t.Helper()
	return a.do("POST", "/api/v1/jobs", map[string]any{"feature_name": feature, "input_data": input}, hdr...)
}

// listIDs returns the ids GET /api/v1/jobs answers (with an optional query).
func (a as) listIDs(query string) []string {
	a.cl.t.Helper()
	code, body := a.do("GET", "/api/v1/jobs"+query, nil)
	require.Equal(a.cl.t, http.StatusOK, code, "%v", body)
	var ids []string
	for _, j := range body["jobs"].([]any) {
		ids = append(ids, j.(map[string]any)["id"].(string))
	}
	slices.Sort(ids)
	return ids
}

func errCode(body map[string]any) string {
	if e, ok := body["error"].(map[string]any); ok {
		return e["code"].(string)
	}
	return ""
}

// wsDial opens /ws/{id}?query with optional headers; it returns the connection or the refused
// handshake's status.
func wsDial(t *testing.T, base, id, query string, hdr http.Header) (*websocket.Conn, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws/" + id
	if query != "" {
		u += "?" + query
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		require.NotNil(t, resp, "dial %s: %v", u, err)
		return nil, resp.StatusCode
	}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return conn, http.StatusSwitchingProtocols
}

// wsFirst reads the first message of a connection.
func wsFirst(t *testing.T, conn *websocket.Conn) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, data, err := conn.Read(ctx)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m))
	return m
}

// Two tenants and an admin through REST, WebSocket, tickets, Idempotency-Keys, asynqmon and health:
// no tenant sees or touches another's jobs, and another tenant's job answers as one that does not
// exist.
func TestTenantsAreIsolated(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry)
	api := c.startAPI(tenantKeys...)
	cl := c.client(api)
	acme, globex, root := as{cl, "key-acme"}, as{cl, "key-globex"}, as{cl, "key-root"}

	// The same Idempotency-Key and body in two tenants makes two jobs.
	input := map[string]any{"topic": "tenancy"}
	code, body := acme.create("report", input, "Idempotency-Key", "same-key")
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	a := body["job_id"].(string)
	code, body = globex.create("report", input, "Idempotency-Key", "same-key")
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	g := body["job_id"].(string)
	require.NotEqual(t, a, g, "Idempotency-Keys are scoped per tenant")
	code, body = acme.create("report", input, "Idempotency-Key", "same-key")
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, a, body["job_id"], "a replay in the same tenant returns the same job")
	code, body = root.create("report", input)
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	r := body["job_id"].(string)

	// The job object names its tenant; another tenant's job is exactly a job that does not exist.
	code, body = acme.do("GET", "/api/v1/jobs/"+a, nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "acme", body["job"].(map[string]any)["tenant"])
	missing := "6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11"
	for _, req := range []struct{ method, path string }{
		{"GET", "/api/v1/jobs/%s"}, {"GET", "/api/v1/jobs/%s/events"},
		{"POST", "/api/v1/jobs/%s/cancel"}, {"POST", "/api/v1/jobs/%s/resume"},
	} {
		_, notFound := acme.do(req.method, strings.ReplaceAll(req.path, "%s", missing), nil)
		code, body := acme.do(req.method, strings.ReplaceAll(req.path, "%s", g), nil)
		require.Equal(t, http.StatusNotFound, code, "%s %s: %v", req.method, req.path, body)
		require.Equal(t, notFound, body, "%s %s: another tenant's job answers as a missing one", req.method, req.path)
	}
	code, body = acme.do("POST", "/api/v1/ws-tickets", map[string]any{"job_id": g})
	require.Equal(t, http.StatusNotFound, code, "%v", body)
	require.Equal(t, "job_not_found", errCode(body))
	code, body = globex.do("GET", "/api/v1/jobs/"+g, nil)
	require.Equal(t, http.StatusOK, code)
	require.NotEqual(t, "CANCELLED", body["job"].(map[string]any)["status"], "acme's cancel did not reach globex's job")

	// Lists: each tenant its own; the admin everyone, or one tenant with ?tenant=.
	require.Equal(t, []string{a}, acme.listIDs(""))
	require.Equal(t, []string{g}, globex.listIDs(""))
	require.Equal(t, sorted(a, g, r), root.listIDs(""))
	require.Equal(t, []string{a}, root.listIDs("?tenant=acme"))
	require.Equal(t, []string{r}, root.listIDs("?tenant=ops"))
	require.Empty(t, root.listIDs("?tenant=initech"))
	require.Equal(t, []string{a}, acme.listIDs("?tenant=acme"))
	code, body = acme.do("GET", "/api/v1/jobs?tenant=globex", nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Equal(t, "forbidden", errCode(body))
	// The admin reads and acts on any tenant's job.
	code, body = root.do("GET", "/api/v1/jobs/"+g, nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "globex", body["job"].(map[string]any)["tenant"])

	// Keys in URLs: refused on REST routes, accepted on /ws/.
	code, body = cl.do("GET", "/api/v1/jobs?api_key=key-acme", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Contains(t, body["error"].(map[string]any)["message"], "/ws/")
	conn, status := wsDial(t, cl.base, a, "api_key=key-acme", nil)
	require.Equal(t, http.StatusSwitchingProtocols, status)
	require.Equal(t, "snapshot", wsFirst(t, conn)["type"])
	_, status = wsDial(t, cl.base, g, "api_key=key-acme", nil)
	require.Equal(t, http.StatusNotFound, status, "another tenant's job over WebSocket")
	_, status = wsDial(t, cl.base, g, "", http.Header{"X-Api-Key": {"key-acme"}})
	require.Equal(t, http.StatusNotFound, status)

	// Tickets: single use, for one job, redeemable on any replica.
	api2 := c.startAPI(tenantKeys...)
	code, body = acme.do("POST", "/api/v1/ws-tickets", map[string]any{"job_id": a})
	require.Equal(t, http.StatusCreated, code, "%v", body)
	ticket := body["ticket"].(string)
	expires := parseTime(t, body["expires_at"])
	require.WithinDuration(t, time.Now().Add(time.Minute), expires, 5*time.Second)
	conn, status = wsDial(t, "http://"+api2.Addr, a, "ticket="+ticket, nil)
	require.Equal(t, http.StatusSwitchingProtocols, status, "a ticket from one replica opens a WebSocket on another")
	snap := wsFirst(t, conn)
	require.Equal(t, "snapshot", snap["type"])
	require.Equal(t, a, snap["job"].(map[string]any)["id"])
	_, status = wsDial(t, cl.base, a, "ticket="+ticket, nil)
	require.Equal(t, http.StatusUnauthorized, status, "a ticket is single use")
	code, body = acme.do("POST", "/api/v1/ws-tickets", map[string]any{"job_id": a})
	require.Equal(t, http.StatusCreated, code)
	_, status = wsDial(t, cl.base, r, "ticket="+body["ticket"].(string), nil)
	require.Equal(t, http.StatusUnauthorized, status, "a ticket opens only its own job")

	// /health/services: the status to anyone, the detail with a key.
	code, body = cl.do("GET", "/health/services", nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, map[string]any{"status": "ok"}, body)
	code, body = acme.do("GET", "/health/services", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "services")

	// asynqmon: the cookie holds a session, not the key; tenants read, only admins change queues.
	browser := func(key string) (*http.Client, func(method, path string) int) {
		jar, err := cookiejar.New(nil)
		require.NoError(t, err)
		hc := &http.Client{Jar: jar}
		do := func(method, path string) int {
			req, err := http.NewRequestWithContext(context.Background(), method, cl.base+path, nil)
			require.NoError(t, err)
			resp, err := hc.Do(req)
			require.NoError(t, err)
			raw, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode >= 400 {
				require.Contains(t, string(raw), `"success":false`, "%s %s: %s", method, path, raw)
			}
			return resp.StatusCode
		}
		require.Equal(t, http.StatusOK, do("GET", "/monitoring/?api_key="+key))
		return hc, do
	}
	hc, tenantUI := browser("key-acme")
	for _, ck := range hc.Jar.Cookies(mustURL(t, cl.base+"/monitoring/")) {
		require.NotContains(t, ck.Value, "key-acme", "the cookie never holds the key")
	}
	require.Equal(t, http.StatusOK, tenantUI("GET", "/monitoring/api/queues"))
	require.Equal(t, http.StatusForbidden, tenantUI("POST", "/monitoring/api/queues/default:pause"))
	require.Equal(t, http.StatusForbidden, tenantUI("GET", "/monitoring/api/redis_info"))
	_, adminUI := browser("key-root")
	require.Equal(t, http.StatusNoContent, adminUI("POST", "/monitoring/api/queues/default:pause"))
	require.Equal(t, http.StatusNoContent, adminUI("POST", "/monitoring/api/queues/default:resume"))
	require.Equal(t, http.StatusOK, adminUI("GET", "/monitoring/api/redis_info"))
}

func sorted(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// Each tenant has its own request budget, shared by every API replica, and its own cap on
// WebSockets; over either the answer is 429 rate_limited with Retry-After.
func TestTenantLimits(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry)
	env := append(slices.Clone(tenantKeys), "CAO_RATE_LIMIT=6/1m", "CAO_WS_MAX_PER_TENANT=2")
	api1, api2 := c.startAPI(env...), c.startAPI(env...)
	one, two := c.client(api1), c.client(api2)
	acme1, acme2, globex := as{one, "key-acme"}, as{two, "key-acme"}, as{one, "key-globex"}

	code, body := acme1.create("report", map[string]any{"topic": "x"})
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	id := body["job_id"].(string)
	for i := range 5 { // 1 + 5 = the budget of 6, spread over both replicas
		who := []as{acme1, acme2}[i%2]
		code, body := who.do("GET", "/api/v1/jobs/"+id, nil)
		require.Equal(t, http.StatusOK, code, "request %d: %v", i+2, body)
	}
	for _, who := range []as{acme1, acme2} {
		code, body := who.do("GET", "/api/v1/jobs", nil)
		require.Equal(t, http.StatusTooManyRequests, code, "%v", body)
		require.Equal(t, "rate_limited", errCode(body))
	}
	req, err := http.NewRequestWithContext(context.Background(), "GET", one.base+"/api/v1/jobs", nil)
	require.NoError(t, err)
	req.Header.Set("X-API-Key", "key-acme")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	code, _ = globex.do("GET", "/api/v1/jobs", nil)
	require.Equal(t, http.StatusOK, code, "another tenant has its own budget")
	code, _ = one.do("GET", "/health", nil)
	require.Equal(t, http.StatusOK, code, "liveness is outside the budget")

	// WebSocket cap per tenant on one API process. The budget above is spent, so these connect with
	// the key in the query (WebSockets are outside /api/v1).
	for range 2 {
		conn, status := wsDial(t, one.base, id, "api_key=key-acme", nil)
		require.Equal(t, http.StatusSwitchingProtocols, status)
		require.Equal(t, "snapshot", wsFirst(t, conn)["type"])
	}
	_, status := wsDial(t, one.base, id, "api_key=key-acme", nil)
	require.Equal(t, http.StatusTooManyRequests, status, "a third connection of the tenant")
	conn, status := wsDial(t, two.base, id, "api_key=key-acme", nil)
	require.Equal(t, http.StatusSwitchingProtocols, status, "the cap is per API process")
	require.NoError(t, conn.Close(websocket.StatusNormalClosure, ""))
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

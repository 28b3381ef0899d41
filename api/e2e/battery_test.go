package e2e

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"
)

// badCase is one request of the bad-input battery and the error answer the contract gives it.
type badCase struct {
	name   string
	method string
	path   string
	// body is sent as is, with Content-Type: application/json unless hdr says otherwise; nil sends
	// no body.
	body any
	// chunked sends the body without a Content-Length.
	chunked bool
	// key is the API key sent in X-API-Key: "" sends acme's key, noKey none.
	key string
	// hdr are header pairs set after the defaults; an empty value removes the header.
	hdr []string
	// raw, when set, is written as is on a TCP connection instead (method, path and the rest ignored):
	// requests net/http's client refuses to send.
	raw string

	status int
	code   string

	// bug, when set, says how the server deviates from the contract today: the case keeps the
	// contract's answer and fails until the server is fixed.
	bug string
}

// noKey sends a request without an API key.
const noKey = "-"

// unknownJobID is a well-formed job id that no job has.
const unknownJobID = "6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11"

// batteryCounts is what a refused request must leave unchanged: the rows of every table a request
// could write and the tasks in Redis.
type batteryCounts struct {
	Jobs, Steps, Events, Outbox, IdempotencyKeys, Inputs, Attempts int64
	Tasks                                                          int
}

// battery sends the cases to one API process and checks Postgres and Redis around each.
type battery struct {
	addr string
	hc   *http.Client
	db   *sql.DB
	insp *asynq.Inspector
}

func (b *battery) counts(t *testing.T) batteryCounts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n batteryCounts
	require.NoError(t, b.db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM jobs), (SELECT count(*) FROM job_steps), (SELECT count(*) FROM job_events),
		(SELECT count(*) FROM outbox), (SELECT count(*) FROM idempotency_keys),
		(SELECT count(*) FROM job_inputs), (SELECT count(*) FROM step_attempts)`).Scan(
		&n.Jobs, &n.Steps, &n.Events, &n.Outbox, &n.IdempotencyKeys, &n.Inputs, &n.Attempts))
	queues, err := b.insp.Queues()
	require.NoError(t, err)
	for _, q := range queues {
		info, err := b.insp.GetQueueInfo(q)
		require.NoError(t, err)
		n.Tasks += info.Size + info.Completed
	}
	return n
}

// send performs the case's request and returns the status, headers and body of the answer.
func (b *battery) send(t *testing.T, tc badCase) (int, http.Header, []byte) {
	t.Helper()
	if tc.raw != "" {
		return rawExchange(t, b.addr, tc.raw)
	}
	var body io.Reader
	switch v := tc.body.(type) {
	case nil:
	case string:
		body = strings.NewReader(v)
		if tc.chunked {
			body = io.MultiReader(body) // no known length: sent chunked
		}
	default:
		t.Fatalf("case body must be a string, not %T", tc.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, tc.method, "http://"+b.addr+tc.path, body)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	switch tc.key {
	case "":
		req.Header.Set("X-API-Key", "ka")
	case noKey:
	default:
		req.Header.Set("X-API-Key", tc.key)
	}
	for i := 0; i+1 < len(tc.hdr); i += 2 {
		if tc.hdr[i+1] == "" {
			req.Header.Del(tc.hdr[i])
		} else {
			req.Header.Set(tc.hdr[i], tc.hdr[i+1])
		}
	}
	resp, err := b.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, raw
}

// rawExchange writes req on a new TCP connection to addr and reads one answer. The request is
// written while the answer is read: the server may answer (and close) before it read all of an
// oversized request.
func rawExchange(t *testing.T, addr, req string) (int, http.Header, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = io.WriteString(conn, req) // an error here is the server closing early; the answer tells
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	_ = conn.Close()
	<-wrote
	return resp.StatusCode, resp.Header, raw
}

// requireEnvelope checks an error answer: the status, a JSON Content-Type and the envelope
// {"success": false, "error": {"code", "message"}} with the code.
func requireEnvelope(t *testing.T, status int, hdr http.Header, raw []byte, wantStatus int, wantCode string) {
	t.Helper()
	require.Equal(t, wantStatus, status, "status; body: %q", raw)
	require.Contains(t, hdr.Get("Content-Type"), "application/json", "body: %q", raw)
	var env struct {
		Success *bool `json:"success"`
		Error   *struct {
			Code    *string `json:"code"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	require.NoError(t, dec.Decode(&env), "body: %q", raw)
	require.False(t, dec.More(), "one JSON value; body: %q", raw)
	require.NotNil(t, env.Success, "success; body: %q", raw)
	require.False(t, *env.Success, "success; body: %q", raw)
	require.NotNil(t, env.Error, "error; body: %q", raw)
	require.NotNil(t, env.Error.Code, "error.code; body: %q", raw)
	require.Equal(t, wantCode, *env.Error.Code, "error.code; body: %q", raw)
	require.NotNil(t, env.Error.Message, "error.message; body: %q", raw)
	require.NotEmpty(t, strings.TrimSpace(*env.Error.Message), "error.message; body: %q", raw)
}

// cursorOf forges a list cursor the way the API encodes them (base64url of "micros|id").
func cursorOf(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// rawRequest is an HTTP/1.1 request for rawExchange with acme's key and a JSON body (none when
// body is empty); extra are more header lines, each ending in \r\n.
func rawRequest(method, path, extra, body string) string {
	s := method + " " + path + " HTTP/1.1\r\nHost: cao.test\r\nX-API-Key: ka\r\nConnection: close\r\n" + extra
	if body != "" {
		s += fmt.Sprintf("Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	return s + "\r\n" + body
}

// TestBadInputBattery sends bad input of every kind to every endpoint of an API with tenants and
// keys, and checks that each answer is the contract's error (status, envelope and exact code) and
// that none of them wrote a row in Postgres or a task in Redis. Cases marked with bug: are
// deviations from the contract found by this battery; they keep the contract's answer.
func TestBadInputBattery(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry, "CAO_MAX_BODY_BYTES=2048")
	api := c.startAPI("CAO_AUTH=on", "CAO_API_KEYS=acme:ka,globex:kg", "CAO_ADMIN_KEYS=ops:kr")
	db, err := sql.Open("pgx", c.PG)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	b := &battery{
		addr: api.Addr,
		hc: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		db:   db,
		insp: asynq.NewInspectorFromRedisClient(c.Redis.Client),
	}
	acme := c.client(api)
	as := func(key string) []string { return []string{"X-API-Key", key} }

	// The jobs the id-based cases need. No worker runs: a started job stays queued.
	code, body := acme.do("POST", "/api/v1/jobs", map[string]any{"feature_name": "report", "input_data": map[string]any{"topic": "a"}},
		append(as("ka"), "Idempotency-Key", "battery-a")...)
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	queued := body["job_id"].(string) // acme's, queued: not resumable
	post := func(key, path string, payload any) map[string]any {
		t.Helper()
		code, body := acme.do("POST", path, payload, as(key)...)
		require.Contains(t, []int{http.StatusAccepted, http.StatusCreated}, code, "POST %s: %v", path, body)
		return body
	}
	create := func(key, topic string) string {
		t.Helper()
		return post(key, "/api/v1/jobs", map[string]any{"feature_name": "report", "input_data": map[string]any{"topic": topic}})["job_id"].(string)
	}
	cancelled := create("ka", "b") // acme's, CANCELLED: resumable, already terminal
	post("ka", "/api/v1/jobs/"+cancelled+"/cancel", nil)
	theirs := create("kg", "g") // globex's, CANCELLED: resumable by globex only
	post("kg", "/api/v1/jobs/"+theirs+"/cancel", nil)
	theirsActive := create("kg", "g2") // globex's, queued: cancellable by globex only
	ticket := post("ka", "/api/v1/ws-tickets", map[string]any{"job_id": queued})["ticket"].(string)

	// A /monitoring session of acme's (non-admin) key: sign in once with ?api_key=, which redirects to
	// the same page without the key and sets the session cookie.
	session := func() string {
		req, err := http.NewRequest(http.MethodGet, "http://"+b.addr+"/monitoring/?api_key=ka", nil)
		require.NoError(t, err)
		resp, err := b.hc.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		for _, ck := range resp.Cookies() {
			if ck.Name == "cao_monitoring_session" && ck.Value != "" {
				return ck.Name + "=" + ck.Value
			}
		}
		t.Fatalf("no monitoring session cookie in %v", resp.Header)
		return ""
	}()

	// Wait until the outbox is drained into Redis: from then on nothing changes by itself.
	require.True(t, pollUntil(30*time.Second, func() bool {
		n := b.counts(t)
		return n.Outbox == 0 && n.Tasks > 0
	}), "outbox not drained: %+v", b.counts(t))

	const jobsPath = "/api/v1/jobs"
	job := func(id string) string { return "/api/v1/jobs/" + id }
	okInput := `{"feature_name": "report", "input_data": {"topic": "x"}}`
	tooLarge := `{"feature_name": "report", "input_data": {"topic": "` + strings.Repeat("x", 4000) + `"}}`
	resumeTooLarge := `{"from_step": "` + strings.Repeat("x", 4000) + `"}`
	ticketTooLarge := `{"job_id": "` + strings.Repeat("x", 4000) + `"}`
	validUUID := "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
	upgrade := []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13",
		"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}
	withUpgrade := func(extra ...string) []string { return append(append([]string{}, upgrade...), extra...) }
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("ka:"))

	cases := []badCase{
		// POST /api/v1/jobs: the body.
		{name: "create malformed json", method: "POST", path: jobsPath, body: `{"feature_name": "report",`, status: 400, code: "invalid_json"},
		{name: "create empty body", method: "POST", path: jobsPath, body: ``, status: 400, code: "invalid_json"},
		{name: "create whitespace body", method: "POST", path: jobsPath, body: " \n\t", status: 400, code: "invalid_json"},
		{name: "create no body at all", method: "POST", path: jobsPath, status: 400, code: "invalid_json"},
		{name: "create not an object", method: "POST", path: jobsPath, body: `[1,2]`, status: 400, code: "invalid_request"},
		{name: "create a JSON string", method: "POST", path: jobsPath, body: `"report"`, status: 400, code: "invalid_request"},
		{name: "create JSON null", method: "POST", path: jobsPath, body: `null`, status: 400, code: "invalid_request"},
		{name: "create trailing data", method: "POST", path: jobsPath, body: okInput + ` {}`, status: 400, code: "invalid_json"},
		{name: "create missing feature", method: "POST", path: jobsPath, body: `{"input_data": {}}`, status: 400, code: "invalid_request"},
		{name: "create empty feature", method: "POST", path: jobsPath, body: `{"feature_name": "", "input_data": {"topic": "x"}}`, status: 400, code: "invalid_request"},
		{name: "create blank feature", method: "POST", path: jobsPath, body: `{"feature_name": "  ", "input_data": {"topic": "x"}}`, status: 400, code: "invalid_request"},
		{name: "create null feature", method: "POST", path: jobsPath, body: `{"feature_name": null, "input_data": {"topic": "x"}}`, status: 400, code: "invalid_request"},
		{name: "create feature wrong type", method: "POST", path: jobsPath, body: `{"feature_name": 5}`, status: 400, code: "invalid_request"},
		{name: "create feature array", method: "POST", path: jobsPath, body: `{"feature_name": ["report"], "input_data": {"topic": "x"}}`, status: 400, code: "invalid_request"},
		{name: "create unknown field", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input": {}}`, status: 400, code: "invalid_request"},
		{name: "create unknown feature", method: "POST", path: jobsPath, body: `{"feature_name": "nope", "input_data": {}}`, status: 404, code: "feature_not_found"},
		{name: "create NUL in feature name", method: "POST", path: jobsPath, body: `{"feature_name": "rep\u0000ort", "input_data": {"topic": "x"}}`, status: 400, code: "invalid_request"},
		{name: "create invalid UTF-8 in the body", method: "POST", path: jobsPath, body: "{\"feature_name\": \"report\", \"input_data\": {\"topic\": \"a\xffb\"}}", status: 400, code: "invalid_json"},
		{name: "create NUL in webhook_url", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x"}, "webhook_url": "http://a\u0000b/"}`, status: 400, code: "invalid_request"},
		// POST /api/v1/jobs: input_data.
		{name: "create wrong input type", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": 7, "pages": "x"}}`, status: 422, code: "invalid_input"},
		{name: "create missing required input", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {}}`, status: 422, code: "invalid_input"},
		{name: "create no input_data", method: "POST", path: jobsPath, body: `{"feature_name": "report"}`, status: 422, code: "invalid_input"},
		{name: "create input_data null", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": null}`, status: 422, code: "invalid_input"},
		{name: "create input not object", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": "x"}`, status: 422, code: "invalid_input"},
		{name: "create input an array", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": [{"topic": "x"}]}`, status: 422, code: "invalid_input"},
		{name: "create topic too long", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "` + strings.Repeat("t", 51) + `"}}`, status: 422, code: "invalid_input"},
		{name: "create pages below minimum", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "pages": 0}}`, status: 422, code: "invalid_input"},
		{name: "create NUL in an input string", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "a\u0000b"}}`, status: 422, code: "invalid_input"},
		{name: "create NUL in an input key", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "k\u0000": 1}}`, status: 422, code: "invalid_input"},
		{name: "create NUL in a nested string", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "tags": [{"a": "\u0000"}]}}`, status: 422, code: "invalid_input"},
		{name: "create number out of range", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "n": 1e999999}}`, status: 422, code: "invalid_input"},
		{name: "create negative number out of range", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "n": -1e999999}}`, status: 422, code: "invalid_input"},
		{name: "create number underflow", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "n": 1e-999999}}`, status: 422, code: "invalid_input"},
		{name: "create nested number out of range", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "n": [1, {"m": 1e400000}]}}`, status: 422, code: "invalid_input"},
		{name: "create integer out of range", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x", "pages": 1e999999}}`, status: 422, code: "invalid_input"},
		// POST /api/v1/jobs: transport.
		{name: "create too large", method: "POST", path: jobsPath, body: tooLarge, status: 413, code: "body_too_large"},
		{name: "create too large chunked", method: "POST", path: jobsPath, body: tooLarge, chunked: true, status: 413, code: "body_too_large"},
		{name: "create wrong content type", method: "POST", path: jobsPath, body: `{}`, hdr: []string{"Content-Type", "text/plain"}, status: 415, code: "unsupported_media_type"},
		{name: "create form content type", method: "POST", path: jobsPath, body: okInput, hdr: []string{"Content-Type", "application/x-www-form-urlencoded"}, status: 415, code: "unsupported_media_type"},
		{name: "create malformed content type", method: "POST", path: jobsPath, body: okInput, hdr: []string{"Content-Type", "application/json; ="}, status: 415, code: "unsupported_media_type"},
		{name: "create invalid UTF-8 in Idempotency-Key", method: "POST", path: jobsPath, body: okInput, hdr: []string{"Idempotency-Key", "k\xff\xfe"}, status: 400, code: "invalid_request"},
		{name: "create Idempotency-Key too long", method: "POST", path: jobsPath, body: okInput, hdr: []string{"Idempotency-Key", strings.Repeat("k", 300)}, status: 400, code: "invalid_request"},
		{name: "create NUL in Idempotency-Key", raw: rawRequest("POST", jobsPath, "Idempotency-Key: k\x00k\r\n", okInput), status: 400, code: "bad_request"},
		{name: "create Idempotency-Key reused with another body", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "other"}}`, hdr: []string{"Idempotency-Key", "battery-a"}, status: 422, code: "idempotency_key_reused"},
		{name: "create webhook_url not allowed", method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": "x"}, "webhook_url": "http://example.com/hook"}`, status: 422, code: "webhook_not_allowed"},
		// POST /api/v1/jobs: keys.
		{name: "create without key", method: "POST", path: jobsPath, body: okInput, key: noKey, status: 401, code: "unauthorized"},
		{name: "create wrong key", method: "POST", path: jobsPath, body: okInput, key: "nope", status: 401, code: "unauthorized"},
		{name: "create Basic auth", method: "POST", path: jobsPath, body: okInput, key: noKey, hdr: []string{"Authorization", basic}, status: 401, code: "unauthorized"},
		{name: "create api_key in the query", method: "POST", path: jobsPath + "?api_key=ka", body: okInput, status: 401, code: "unauthorized"},
		{name: "create NUL in X-API-Key", raw: strings.Replace(rawRequest("POST", jobsPath, "", okInput), "X-API-Key: ka", "X-API-Key: k\x00a", 1), status: 400, code: "bad_request"},

		// GET /api/v1/jobs/{id}.
		{name: "get bad job id", method: "GET", path: job("not-a-uuid"), status: 400, code: "invalid_job_id"},
		{name: "get NUL job id", method: "GET", path: job("%00"), status: 400, code: "invalid_job_id"},
		{name: "get invalid UTF-8 job id", method: "GET", path: job("%ff"), status: 400, code: "invalid_job_id"},
		{name: "get job id without dashes", method: "GET", path: job(strings.ReplaceAll(validUUID, "-", "")), status: 400, code: "invalid_job_id"},
		{name: "get job id in braces", method: "GET", path: job("%7B" + validUUID[:34] + "%7D"), status: 400, code: "invalid_job_id"},
		{name: "get unknown job", method: "GET", path: job(unknownJobID), status: 404, code: "job_not_found"},
		{name: "get another tenant's job", method: "GET", path: job(theirs), status: 404, code: "job_not_found"},
		{name: "get without key", method: "GET", path: job(queued), key: noKey, status: 401, code: "unauthorized"},
		{name: "get api_key in the query", method: "GET", path: job(queued) + "?api_key=ka", key: noKey, status: 401, code: "unauthorized"},

		// GET /api/v1/jobs.
		{name: "list bad status filter", method: "GET", path: "/api/v1/jobs?status=DONE", status: 400, code: "invalid_query"},
		{name: "list NUL in status", method: "GET", path: "/api/v1/jobs?status=%00", status: 400, code: "invalid_query"},
		{name: "list invalid UTF-8 in status", method: "GET", path: "/api/v1/jobs?status=%ff", status: 400, code: "invalid_query"},
		{name: "list limit 0", method: "GET", path: "/api/v1/jobs?limit=0", status: 400, code: "invalid_query"},
		{name: "list limit 501", method: "GET", path: "/api/v1/jobs?limit=501", status: 400, code: "invalid_query"},
		{name: "list limit negative", method: "GET", path: "/api/v1/jobs?limit=-1", status: 400, code: "invalid_query"},
		{name: "list limit not a number", method: "GET", path: "/api/v1/jobs?limit=ten", status: 400, code: "invalid_query"},
		{name: "list limit NUL", method: "GET", path: "/api/v1/jobs?limit=%00", status: 400, code: "invalid_query"},
		{name: "list bad cursor", method: "GET", path: "/api/v1/jobs?cursor=bm90LWEtY3Vyc29y", status: 400, code: "invalid_query"},
		{name: "list NUL in cursor", method: "GET", path: "/api/v1/jobs?cursor=%00", status: 400, code: "invalid_query"},
		{name: "list invalid UTF-8 in cursor", method: "GET", path: "/api/v1/jobs?cursor=%ff", status: 400, code: "invalid_query"},
		{name: "list cursor not base64url", method: "GET", path: "/api/v1/jobs?cursor=%21%21%21", status: 400, code: "invalid_query"},
		{name: "list forged cursor min time", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("-9223372036854775808|"+unknownJobID), status: 400, code: "invalid_query"},
		{name: "list forged cursor negative time", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("-1|"+unknownJobID), status: 400, code: "invalid_query"},
		{name: "list forged cursor year 10000", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("253402300800000000|"+unknownJobID), status: 400, code: "invalid_query"},
		{name: "list forged cursor time overflow", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("99999999999999999999|"+unknownJobID), status: 400, code: "invalid_query"},
		{name: "list forged cursor time not a number", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("yesterday|"+unknownJobID), status: 400, code: "invalid_query"},
		{name: "list forged cursor non-UUID id", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("1700000000000000|not-a-uuid"), status: 400, code: "invalid_query"},
		{name: "list forged cursor NUL id", method: "GET", path: "/api/v1/jobs?cursor=" + cursorOf("1700000000000000|\x00"), status: 400, code: "invalid_query"},
		{name: "list NUL in feature filter", method: "GET", path: "/api/v1/jobs?feature=%00", status: 400, code: "invalid_query"},
		{name: "list invalid UTF-8 in feature filter", method: "GET", path: "/api/v1/jobs?feature=%ff", status: 400, code: "invalid_query"},
		{name: "list tenant bad name", method: "GET", path: "/api/v1/jobs?tenant=bad%20name", status: 400, code: "invalid_query"},
		{name: "list tenant empty", method: "GET", path: "/api/v1/jobs?tenant=", status: 400, code: "invalid_query"},
		{name: "list tenant too long", method: "GET", path: "/api/v1/jobs?tenant=" + strings.Repeat("t", 64), status: 400, code: "invalid_query"},
		{name: "list NUL in tenant", method: "GET", path: "/api/v1/jobs?tenant=%00", status: 400, code: "invalid_query"},
		{name: "list invalid UTF-8 in tenant", method: "GET", path: "/api/v1/jobs?tenant=%ff", status: 400, code: "invalid_query"},
		{name: "list tenant bad name as admin", method: "GET", path: "/api/v1/jobs?tenant=a%00b", key: "kr", status: 400, code: "invalid_query"},
		{name: "list another tenant as non-admin", method: "GET", path: "/api/v1/jobs?tenant=globex", status: 403, code: "forbidden"},
		{name: "list api_key in the query", method: "GET", path: "/api/v1/jobs?api_key=ka", key: noKey, status: 401, code: "unauthorized"},
		{name: "list api_key in the query beside a header key", method: "GET", path: "/api/v1/jobs?api_key=ka", status: 401, code: "unauthorized"},
		{name: "list without key", method: "GET", path: "/api/v1/jobs", key: noKey, status: 401, code: "unauthorized"},
		{name: "list wrong key", method: "GET", path: "/api/v1/jobs", key: "kz", status: 401, code: "unauthorized"},
		{name: "list wrong bearer", method: "GET", path: "/api/v1/jobs", key: noKey, hdr: []string{"Authorization", "Bearer kz"}, status: 401, code: "unauthorized"},
		{name: "list Basic auth", method: "GET", path: "/api/v1/jobs", key: noKey, hdr: []string{"Authorization", basic}, status: 401, code: "unauthorized"},
		{name: "list empty bearer", method: "GET", path: "/api/v1/jobs", key: noKey, hdr: []string{"Authorization", "Bearer "}, status: 401, code: "unauthorized"},
		{name: "list Token scheme", method: "GET", path: "/api/v1/jobs", key: noKey, hdr: []string{"Authorization", "Token ka"}, status: 401, code: "unauthorized"},

		// POST /api/v1/jobs/{id}/resume.
		{name: "resume bad id", method: "POST", path: job("nope") + "/resume", status: 400, code: "invalid_job_id"},
		{name: "resume unknown job", method: "POST", path: job(unknownJobID) + "/resume", status: 404, code: "job_not_found"},
		{name: "resume another tenant's cancelled job", method: "POST", path: job(theirs) + "/resume", body: `{}`, status: 404, code: "job_not_found"},
		{name: "resume running job", method: "POST", path: job(queued) + "/resume", body: `{}`, status: 409, code: "job_not_resumable"},
		{name: "resume running job malformed", method: "POST", path: job(queued) + "/resume", body: `{"from_step":`, status: 400, code: "invalid_json"},
		{name: "resume NUL in input string", method: "POST", path: job(cancelled) + "/resume", body: `{"input_data": {"topic": "a\u0000b"}}`, status: 422, code: "invalid_input"},
		{name: "resume NUL in input key", method: "POST", path: job(cancelled) + "/resume", body: `{"input_data": {"topic": "x", "\u0000": 1}}`, status: 422, code: "invalid_input"},
		{name: "resume number out of range", method: "POST", path: job(cancelled) + "/resume", body: `{"input_data": {"topic": "x", "n": 1e999999}}`, status: 422, code: "invalid_input"},
		{name: "resume input not object", method: "POST", path: job(cancelled) + "/resume", body: `{"input_data": "x"}`, status: 422, code: "invalid_input"},
		{name: "resume input wrong field type", method: "POST", path: job(cancelled) + "/resume", body: `{"input_data": {"topic": 7}}`, status: 422, code: "invalid_input"},
		{name: "resume input missing required", method: "POST", path: job(cancelled) + "/resume", body: `{"input_data": {}}`, status: 422, code: "invalid_input"},
		{name: "resume bad input with a good step", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": "draft", "input_data": {"topic": 7}}`, status: 422, code: "invalid_input"},
		{name: "resume from unknown step", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": "nope"}`, status: 422, code: "step_not_found"},
		{name: "resume from unknown step with good input", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": "nope", "input_data": {"topic": "y"}}`, status: 422, code: "step_not_found"},
		{name: "resume from step with NUL", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": "dra\u0000ft"}`, status: 400, code: "invalid_request"},
		{name: "resume from_step wrong type", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": 5}`, status: 400, code: "invalid_request"},
		{name: "resume from_step array", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": ["draft"]}`, status: 400, code: "invalid_request"},
		{name: "resume unknown field", method: "POST", path: job(cancelled) + "/resume", body: `{"from": "draft"}`, status: 400, code: "invalid_request"},
		{name: "resume not an object", method: "POST", path: job(cancelled) + "/resume", body: `["draft"]`, status: 400, code: "invalid_request"},
		{name: "resume malformed", method: "POST", path: job(cancelled) + "/resume", body: `{"from_step": "draft"`, status: 400, code: "invalid_json"},
		{name: "resume trailing data", method: "POST", path: job(cancelled) + "/resume", body: `{} {}`, status: 400, code: "invalid_json"},
		{name: "resume wrong content type", method: "POST", path: job(cancelled) + "/resume", body: `{}`, hdr: []string{"Content-Type", "text/plain"}, status: 415, code: "unsupported_media_type"},
		{name: "resume too large", method: "POST", path: job(cancelled) + "/resume", body: resumeTooLarge, status: 413, code: "body_too_large"},
		{name: "resume without key", method: "POST", path: job(cancelled) + "/resume", body: `{}`, key: noKey, status: 401, code: "unauthorized"},
		{name: "resume api_key in the query", method: "POST", path: job(cancelled) + "/resume?api_key=ka", body: `{}`, key: noKey, status: 401, code: "unauthorized"},
		{name: "resume with GET", method: "GET", path: job(cancelled) + "/resume", status: 405, code: "method_not_allowed"},

		// POST /api/v1/jobs/{id}/cancel.
		{name: "cancel bad id", method: "POST", path: "/api/v1/jobs/123/cancel", status: 400, code: "invalid_job_id"},
		{name: "cancel unknown job", method: "POST", path: job(unknownJobID) + "/cancel", status: 404, code: "job_not_found"},
		{name: "cancel terminal job", method: "POST", path: job(cancelled) + "/cancel", status: 409, code: "job_already_terminal"},
		{name: "cancel another tenant's job", method: "POST", path: job(theirsActive) + "/cancel", status: 404, code: "job_not_found"},
		{name: "cancel without key", method: "POST", path: job(queued) + "/cancel", key: noKey, status: 401, code: "unauthorized"},
		{name: "cancel wrong key", method: "POST", path: job(queued) + "/cancel", key: "kz", status: 401, code: "unauthorized"},
		{name: "cancel api_key in the query", method: "POST", path: job(queued) + "/cancel?api_key=ka", key: noKey, status: 401, code: "unauthorized"},
		{name: "cancel with GET", method: "GET", path: job(queued) + "/cancel", status: 405, code: "method_not_allowed"},

		// GET /api/v1/jobs/{id}/events.
		{name: "events unknown job", method: "GET", path: job(unknownJobID) + "/events", status: 404, code: "job_not_found"},
		{name: "events bad id", method: "GET", path: job("x") + "/events", status: 400, code: "invalid_job_id"},
		{name: "events another tenant's job", method: "GET", path: job(theirs) + "/events", status: 404, code: "job_not_found"},
		{name: "events after_seq negative", method: "GET", path: job(queued) + "/events?after_seq=-1", status: 400, code: "invalid_query"},
		{name: "events after_seq not a number", method: "GET", path: job(queued) + "/events?after_seq=abc", status: 400, code: "invalid_query"},
		{name: "events after_seq fraction", method: "GET", path: job(queued) + "/events?after_seq=1.5", status: 400, code: "invalid_query"},
		{name: "events after_seq overflow", method: "GET", path: job(queued) + "/events?after_seq=99999999999999999999", status: 400, code: "invalid_query"},
		{name: "events after_seq NUL", method: "GET", path: job(queued) + "/events?after_seq=%00", status: 400, code: "invalid_query"},
		{name: "events after_seq invalid UTF-8", method: "GET", path: job(queued) + "/events?after_seq=%ff", status: 400, code: "invalid_query"},
		{name: "events limit 0", method: "GET", path: job(queued) + "/events?limit=0", status: 400, code: "invalid_query"},
		{name: "events limit too large", method: "GET", path: job(queued) + "/events?limit=10001", status: 400, code: "invalid_query"},
		{name: "events limit not a number", method: "GET", path: job(queued) + "/events?limit=all", status: 400, code: "invalid_query"},
		{name: "events limit invalid UTF-8", method: "GET", path: job(queued) + "/events?limit=%ff", status: 400, code: "invalid_query"},
		{name: "events without key", method: "GET", path: job(queued) + "/events", key: noKey, status: 401, code: "unauthorized"},

		// POST /api/v1/ws-tickets.
		{name: "ticket malformed json", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": `, status: 400, code: "invalid_json"},
		{name: "ticket empty body", method: "POST", path: "/api/v1/ws-tickets", body: ``, status: 400, code: "invalid_json"},
		{name: "ticket missing job_id", method: "POST", path: "/api/v1/ws-tickets", body: `{}`, status: 400, code: "invalid_job_id"},
		{name: "ticket bad job id", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "nope"}`, status: 400, code: "invalid_job_id"},
		{name: "ticket NUL in job id", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "\u0000"}`, status: 400, code: "invalid_job_id"},
		{name: "ticket job id wrong type", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": 5}`, status: 400, code: "invalid_request"},
		{name: "ticket unknown field", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "` + queued + `", "ttl": 3600}`, status: 400, code: "invalid_request"},
		{name: "ticket unknown job", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "` + unknownJobID + `"}`, status: 404, code: "job_not_found"},
		{name: "ticket another tenant's job", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "` + theirs + `"}`, status: 404, code: "job_not_found"},
		{name: "ticket wrong content type", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "` + queued + `"}`, hdr: []string{"Content-Type", "text/plain"}, status: 415, code: "unsupported_media_type"},
		{name: "ticket too large", method: "POST", path: "/api/v1/ws-tickets", body: ticketTooLarge, status: 413, code: "body_too_large"},
		{name: "ticket without key", method: "POST", path: "/api/v1/ws-tickets", body: `{"job_id": "` + queued + `"}`, key: noKey, status: 401, code: "unauthorized"},
		{name: "ticket api_key in the query", method: "POST", path: "/api/v1/ws-tickets?api_key=ka", body: `{"job_id": "` + queued + `"}`, key: noKey, status: 401, code: "unauthorized"},
		{name: "ticket with GET", method: "GET", path: "/api/v1/ws-tickets", status: 405, code: "method_not_allowed"},

		// GET /ws/{id}: refused upgrades are envelopes too.
		{name: "ws without upgrade headers", method: "GET", path: "/ws/" + queued, status: 426, code: "upgrade_required"},
		{name: "ws Upgrade without Connection", method: "GET", path: "/ws/" + queued, hdr: []string{"Upgrade", "websocket"}, status: 426, code: "upgrade_required"},
		{name: "ws Connection without Upgrade", method: "GET", path: "/ws/" + queued, hdr: []string{"Connection", "Upgrade"}, status: 426, code: "upgrade_required"},
		{name: "ws bad id", method: "GET", path: "/ws/bad-id", hdr: upgrade, status: 400, code: "invalid_job_id"},
		{name: "ws unknown job", method: "GET", path: "/ws/" + unknownJobID, hdr: upgrade, status: 404, code: "job_not_found"},
		{name: "ws another tenant's key", method: "GET", path: "/ws/" + queued, key: "kg", hdr: upgrade, status: 404, code: "job_not_found"},
		{name: "ws another tenant's key in the query", method: "GET", path: "/ws/" + queued + "?api_key=kg", key: noKey, hdr: upgrade, status: 404, code: "job_not_found"},
		{name: "ws garbage ticket", method: "GET", path: "/ws/" + queued + "?ticket=garbage", key: noKey, hdr: upgrade, status: 401, code: "unauthorized"},
		{name: "ws empty ticket", method: "GET", path: "/ws/" + queued + "?ticket=", key: noKey, hdr: upgrade, status: 401, code: "unauthorized"},
		{name: "ws ticket of another job", method: "GET", path: "/ws/" + cancelled + "?ticket=" + ticket, key: noKey, hdr: upgrade, status: 401, code: "unauthorized"},
		{name: "ws after_seq negative", method: "GET", path: "/ws/" + queued + "?after_seq=-1", hdr: upgrade, status: 400, code: "invalid_query"},
		{name: "ws after_seq not a number", method: "GET", path: "/ws/" + queued + "?after_seq=x", hdr: upgrade, status: 400, code: "invalid_query"},
		{name: "ws after_seq NUL", method: "GET", path: "/ws/" + queued + "?after_seq=%00", hdr: upgrade, status: 400, code: "invalid_query"},
		{name: "ws without key", method: "GET", path: "/ws/" + queued, key: noKey, hdr: upgrade, status: 401, code: "unauthorized"},
		{name: "ws wrong key in the query", method: "GET", path: "/ws/" + queued + "?api_key=wrong", key: noKey, hdr: upgrade, status: 401, code: "unauthorized"},
		{name: "ws without Sec-WebSocket-Key", method: "GET", path: "/ws/" + queued, hdr: withUpgrade("Sec-WebSocket-Key", ""), status: 400, code: "bad_request"},
		{name: "ws unsupported Sec-WebSocket-Version", method: "GET", path: "/ws/" + queued, hdr: withUpgrade("Sec-WebSocket-Version", "8"), status: 400, code: "bad_request"},
		{name: "ws bad Sec-WebSocket-Key", method: "GET", path: "/ws/" + queued, hdr: withUpgrade("Sec-WebSocket-Key", "short"), status: 400, code: "bad_request"},
		{name: "ws with POST", method: "POST", path: "/ws/" + queued, status: 405, code: "method_not_allowed"},

		// Features, health, metrics.
		{name: "features with POST", method: "POST", path: "/api/v1/features", status: 405, code: "method_not_allowed"},
		{name: "features without key", method: "GET", path: "/api/v1/features", key: noKey, status: 401, code: "unauthorized"},
		{name: "features api_key in the query", method: "GET", path: "/api/v1/features?api_key=ka", key: noKey, status: 401, code: "unauthorized"},
		{name: "health with POST", method: "POST", path: "/health", status: 405, code: "method_not_allowed"},
		{name: "api health with POST", method: "POST", path: "/api/v1/health", status: 405, code: "method_not_allowed"},
		{name: "health services with POST", method: "POST", path: "/health/services", status: 405, code: "method_not_allowed"},
		{name: "api health services with DELETE", method: "DELETE", path: "/api/v1/health/services", status: 405, code: "method_not_allowed"},
		{name: "metrics without key", method: "GET", path: "/metrics", key: noKey, status: 401, code: "unauthorized"},
		{name: "metrics api_key in the query", method: "GET", path: "/metrics?api_key=ka", key: noKey, status: 401, code: "unauthorized"},
		{name: "metrics with POST", method: "POST", path: "/metrics", status: 405, code: "method_not_allowed"},

		// Routes.
		{name: "unknown api route", method: "GET", path: "/api/v1/nope", status: 404, code: "not_found"},
		{name: "unknown api route without key", method: "GET", path: "/api/v1/nope", key: noKey, status: 404, code: "not_found"},
		{name: "unknown job sub-route", method: "GET", path: job(queued) + "/nope", status: 404, code: "not_found"},
		{name: "unknown top-level route", method: "GET", path: "/nope", status: 404, code: "not_found"},
		{name: "list with DELETE", method: "DELETE", path: "/api/v1/jobs", status: 405, code: "method_not_allowed"},
		{name: "job with PUT", method: "PUT", path: job(queued), body: `{}`, status: 405, code: "method_not_allowed"},
		{name: "job with DELETE", method: "DELETE", path: job(queued), status: 405, code: "method_not_allowed"},

		// /monitoring/: read-only for non-admin keys.
		{name: "monitoring pause queue as non-admin", method: "POST", path: "/monitoring/api/queues/default:pause", status: 403, code: "forbidden"},
		{name: "monitoring delete queue as non-admin", method: "DELETE", path: "/monitoring/api/queues/heavy", key: "kg", status: 403, code: "forbidden"},
		{name: "monitoring delete pending tasks as non-admin", method: "POST", path: "/monitoring/api/queues/heavy/pending_tasks:delete_all", status: 403, code: "forbidden"},
		{name: "monitoring archive pending tasks as non-admin", method: "POST", path: "/monitoring/api/queues/heavy/pending_tasks:archive_all", key: noKey, hdr: []string{"Authorization", "Bearer ka"}, status: 403, code: "forbidden"},
		{name: "monitoring redis info as non-admin", method: "GET", path: "/monitoring/api/redis_info", status: 403, code: "forbidden"},
		{name: "monitoring pause queue with a query key", method: "POST", path: "/monitoring/api/queues/default:pause?api_key=ka", key: noKey, status: 403, code: "forbidden"},
		{name: "monitoring redis info in a non-admin session", method: "GET", path: "/monitoring/api/redis_info", key: noKey, hdr: []string{"Cookie", session}, status: 403, code: "forbidden"},
		{name: "monitoring delete pending tasks in a non-admin session", method: "POST", path: "/monitoring/api/queues/heavy/pending_tasks:delete_all", key: noKey, hdr: []string{"Cookie", session}, status: 403, code: "forbidden"},
		{name: "monitoring forged session", method: "GET", path: "/monitoring/api/queues", key: noKey, hdr: []string{"Cookie", "cao_monitoring_session=forged"}, status: 401, code: "unauthorized"},
		{name: "monitoring without key", method: "GET", path: "/monitoring/api/queues", key: noKey, status: 401, code: "unauthorized"},
		{name: "monitoring wrong query key", method: "GET", path: "/monitoring/api/queues?api_key=wrong", key: noKey, status: 401, code: "unauthorized"},
		{name: "monitoring pause queue without key", method: "POST", path: "/monitoring/api/queues/default:pause", key: noKey, status: 401, code: "unauthorized"},

		// Requests net/http refuses before any handler runs.
		{name: "raw headers too large", raw: "GET /health HTTP/1.1\r\nHost: cao.test\r\nX-Big: " + strings.Repeat("a", 1<<20+8192) + "\r\n\r\n", status: 431, code: "headers_too_large"},
		{name: "raw HTTP version 3.0", raw: "GET /health HTTP/3.0\r\nHost: cao.test\r\n\r\n", status: 505, code: "http_version_not_supported"},
		{name: "raw HTTP version 2.0 without preface", raw: "POST /api/v1/jobs HTTP/2.0\r\nHost: cao.test\r\nX-API-Key: ka\r\nContent-Type: application/json\r\nContent-Length: " + fmt.Sprint(len(okInput)) + "\r\n\r\n" + okInput, status: 505, code: "http_version_not_supported"},
		{name: "raw malformed request line", raw: "GARBAGE\r\n\r\n", status: 400, code: "bad_request"},
		{name: "raw unsupported transfer encoding", raw: "POST /api/v1/jobs HTTP/1.1\r\nHost: cao.test\r\nX-API-Key: ka\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", status: 400, code: "bad_request"},
		{name: "raw missing Host", raw: "GET /api/v1/jobs HTTP/1.1\r\nX-API-Key: ka\r\n\r\n", status: 400, code: "bad_request"},
		{name: "raw bad URL escape", raw: rawRequest("GET", "/api/v1/jobs/%zz", "", ""), status: 400, code: "bad_request"},
		{name: "raw NUL in the path", raw: rawRequest("GET", "/api/v1/jobs/a\x00b", "", ""), status: 400, code: "bad_request"},
	}

	seen := map[string]bool{}
	for _, tc := range cases {
		require.False(t, seen[tc.name], "duplicate case name %q", tc.name)
		seen[tc.name] = true
		name := tc.name
		if tc.bug != "" {
			name = "BUG " + name
		}
		t.Run(name, func(t *testing.T) {
			if tc.bug != "" {
				t.Logf("known deviation from the contract: %s", tc.bug)
			}
			before := b.counts(t)
			status, hdr, raw := b.send(t, tc)
			requireEnvelope(t, status, hdr, raw, tc.status, tc.code)
			require.Equal(t, before, b.counts(t), "a refused request wrote rows or tasks")
		})
	}

	// invalid_input names each field.
	t.Run("invalid_input details name each field", func(t *testing.T) {
		before := b.counts(t)
		status, hdr, raw := b.send(t, badCase{method: "POST", path: jobsPath, body: `{"feature_name": "report", "input_data": {"topic": 7, "pages": 0}}`})
		requireEnvelope(t, status, hdr, raw, 422, "invalid_input")
		var env struct {
			Error struct {
				Details any `json:"details"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal(raw, &env))
		details := fmt.Sprint(env.Error.Details)
		require.Contains(t, details, "topic")
		require.Contains(t, details, "pages")
		require.Equal(t, before, b.counts(t))
	})

	// HEAD on a GET route is not an error: 200, the GET's headers, no body.
	heads := []string{"/health", "/api/v1/health", "/api/v1/jobs", job(queued), "/api/v1/features"}
	for _, path := range heads {
		t.Run("HEAD "+path, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodHead, "http://"+b.addr+path, nil)
			require.NoError(t, err)
			req.Header.Set("X-API-Key", "ka")
			resp, err := b.hc.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Empty(t, raw)
			require.Contains(t, resp.Header.Get("Content-Type"), "application/json")
		})
	}

	// The command-line client refuses the same input: exit status 2, the API's code on stderr,
	// nothing written.
	inputFile := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(inputFile, []byte(`{"topic": "a\u0000b"}`), 0o600))
	cliCases := []struct {
		name string
		key  string
		args []string
		want string // on stderr
	}{
		{"cli start unknown feature", "ka", []string{"jobs", "start", "nope", "--input", `{}`}, "feature_not_found"},
		{"cli start input not JSON", "ka", []string{"jobs", "start", "report", "--input", `{"topic":`}, "JSON"},
		{"cli start input with NUL from a file", "ka", []string{"jobs", "start", "report", "--input", "@" + inputFile}, "invalid_input"},
		{"cli start input missing field", "ka", []string{"jobs", "start", "report", "--input", `{}`}, "invalid_input"},
		{"cli start disallowed webhook", "ka", []string{"jobs", "start", "report", "--input", `{"topic": "x"}`, "--webhook-url", "http://evil.example/"}, "webhook_not_allowed"},
		{"cli get bad id", "ka", []string{"jobs", "get", "not-a-uuid"}, "invalid_job_id"},
		{"cli get another tenant's job", "ka", []string{"jobs", "get", theirs}, "job_not_found"},
		{"cli cancel another tenant's job", "ka", []string{"jobs", "cancel", theirsActive}, "job_not_found"},
		{"cli resume from unknown step", "ka", []string{"jobs", "resume", cancelled, "--from-step", "nope"}, "step_not_found"},
		{"cli list bad status", "ka", []string{"jobs", "list", "--status", "DONE"}, "invalid_query"},
		{"cli without key", "", []string{"jobs", "list"}, "unauthorized"},
		{"cli wrong key", "nope", []string{"jobs", "start", "report", "--input", `{"topic": "x"}`}, "unauthorized"},
		{"cli unknown flag", "ka", []string{"jobs", "start", "report", "--bogus"}, "bogus"},
	}
	for _, tc := range cliCases {
		t.Run(tc.name, func(t *testing.T) {
			before := b.counts(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin.api, tc.args...)
			cmd.Env = append(os.Environ(), "CAO_URL=http://"+b.addr, "CAO_API_KEY="+tc.key)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, "stdout: %s", stdout.String())
			require.Equal(t, 2, exit.ExitCode(), "stderr: %s", stderr.String())
			require.Contains(t, stderr.String(), tc.want)
			require.Equal(t, before, b.counts(t), "a refused command wrote rows or tasks")
		})
	}

	// The jobs of the setup are as they were: queued, cancelled, and globex's untouched.
	require.Equal(t, "CANCELLED", acme.jobAs("ka", cancelled)["status"])
	require.Equal(t, "CANCELLED", acme.jobAs("kg", theirs)["status"])
	require.Contains(t, []any{"PENDING", "RUNNING"}, acme.jobAs("kg", theirsActive)["status"])
	require.Contains(t, []any{"PENDING", "RUNNING"}, acme.jobAs("ka", queued)["status"])
	t.Logf("bad-input battery: %d HTTP cases, %d command-line cases (+%d HEAD checks and the invalid_input details check)",
		len(cases), len(cliCases), len(heads))
}

// jobAs fetches a job object with the given key.
func (cl *client) jobAs(key, id string) map[string]any {
	cl.t.Helper()
	code, body := cl.do("GET", "/api/v1/jobs/"+id, nil, "X-API-Key", key)
	require.Equal(cl.t, http.StatusOK, code, "%v", body)
	return body["job"].(map[string]any)
}

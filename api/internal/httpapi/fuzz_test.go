package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
)

// The fuzz targets of this file drive the real Gin handlers without Postgres: POST /api/v1/jobs goes
// through the real orchestrator (feature lookup, input schema, storability) over fuzzStore, whose
// writes always succeed; resume, and the job list with its cursor, go to the fakes of deps_test.go.

// fuzzRegistry has a feature with the contract's input schema and one that takes any object.
const fuzzRegistry = `
services: {sim: {kind: mock}}
features:
  business_plan:
    input:
      type: object
      required: [business_name]
      properties:
        business_name: {type: string, minLength: 1, maxLength: 200}
        budget: {type: number, minimum: 0.1}
        tags: {type: array, items: {type: string}}
    steps: [{name: a, service: sim}, {name: b, service: sim, needs: [a]}]
  open:
    steps: [{name: a, service: sim}]
`

// fuzzMaxBody is the body limit of the fuzzed server: small, so the fuzzer reaches it.
const fuzzMaxBody = 4096

// fuzzStore is the store under the real orchestrator: every write succeeds and is kept.
type fuzzStore struct {
	store.Store
	applied []*store.Change
}

func (s *fuzzStore) Apply(_ context.Context, c *store.Change) error {
	s.applied = append(s.applied, c)
	return nil
}

func (s *fuzzStore) Tx(_ context.Context, fn func(store.Tx) error) error { return fn(fuzzTx{}) }

// fuzzTx reserves every Idempotency-Key: each request of the fuzzer is a first one.
type fuzzTx struct{ store.Tx }

func (fuzzTx) InsertIdempotencyKey(context.Context, *store.IdempotencyRecord) error { return nil }

// fuzzJobs is fakeJobs with job creation by the real orchestrator and an empty job list.
type fuzzJobs struct {
	*fakeJobs
	orch   *orchestrator.Orchestrator
	listed []store.JobFilter
}

func (j *fuzzJobs) CreateJob(ctx context.Context, req orchestrator.CreateRequest) (*orchestrator.JobView, bool, error) {
	return j.orch.CreateJob(ctx, req)
}

func (j *fuzzJobs) ListJobs(_ context.Context, f store.JobFilter) ([]store.Job, *store.Cursor, error) {
	j.listed = append(j.listed, f)
	return nil, nil, nil
}

type fuzzServer struct {
	h     http.Handler
	jobs  *fuzzJobs
	store *fuzzStore
	reg   *registry.Registry
}

func newFuzzServer(t testing.TB, resumeErr error) *fuzzServer {
	reg, err := registry.Parse("r.yaml", []byte(fuzzRegistry), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	st := &fuzzStore{}
	jobs := &fuzzJobs{fakeJobs: &fakeJobs{err: resumeErr}, orch: orchestrator.New(st, reg, nil, nil, orchestrator.Config{})}
	s := New(Deps{
		Jobs: jobs, Health: fakeHealth{}, Metrics: metrics.New(func() float64 { return 0 }), Registry: reg,
		Settings: Settings{MaxBodyBytes: fuzzMaxBody}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, Options{})
	return &fuzzServer{h: s.Handler(), jobs: jobs, store: st, reg: reg}
}

func (s *fuzzServer) reset() {
	s.store.applied = nil
	s.jobs.calls = nil
	s.jobs.listed = nil
}

func (s *fuzzServer) do(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	return rec
}

// errorEnvelope is the only body of a 4xx: {"success": false, "error": {"code", "message"[, "details"]}}.
type errorEnvelope struct {
	Success *bool `json:"success"`
	Error   *struct {
		Code    *string         `json:"code"`
		Message *string         `json:"message"`
		Details json.RawMessage `json:"details"`
	} `json:"error"`
}

// requireAnswer checks what every answer of the fuzzed routes must be: 2xx or 4xx, never 5xx, with a
// JSON body; a 4xx body is exactly the error envelope. It returns the error code ("" for a 2xx).
func requireAnswer(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	body := rec.Body.Bytes()
	require.True(t, rec.Code >= 200 && rec.Code < 300 || rec.Code >= 400 && rec.Code < 500, "status %d: %s", rec.Code, body)
	require.Equal(t, "application/json; charset=utf-8", rec.Header().Get("Content-Type"))
	require.True(t, json.Valid(body), "%s", body)
	if rec.Code < 400 {
		return ""
	}
	var env errorEnvelope
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&env), "a %d body is the error envelope: %s", rec.Code, body)
	require.NotNil(t, env.Success, "%s", body)
	require.False(t, *env.Success, "%s", body)
	require.NotNil(t, env.Error, "%s", body)
	require.NotNil(t, env.Error.Code, "%s", body)
	require.NotNil(t, env.Error.Message, "%s", body)
	require.NotEmpty(t, *env.Error.Code, "%s", body)
	require.NotEmpty(t, *env.Error.Message, "%s", body)
	return *env.Error.Code
}

// FuzzCreateJob posts any body, Content-Type and Idempotency-Key to POST /api/v1/jobs. Every answer
// is a 202 or a 4xx in the error envelope; a body that is not one JSON value is a 400; a
// 202 means the orchestrator stored exactly one job, of the feature asked for, with the key given,
// whose input is a JSON object that passes the feature's schema and the storability check, and the
// answer names that job.
func FuzzCreateJob(f *testing.F) {
	for _, s := range []struct{ body, contentType, key string }{
		{`{"feature_name": "business_plan", "input_data": {"business_name": "Acme"}}`, "application/json", ""},
		{`{"feature_name": "business_plan", "input_data": {"business_name": "Acme", "budget": 0.1, "tags": ["a"]}}`, "application/json; charset=utf-8", "key-1"},
		{`{"feature_name": "business_plan", "input_data": {"business_name": ""}}`, "", ""},
		{`{"feature_name": "business_plan", "input_data": {"business_name": "Acme", "budget": 1e999999}}`, "", ""},
		{`{"feature_name": "open", "input_data": {"n": 1e-16384}}`, "", ""},
		{`{"feature_name": "open", "input_data": {"s": "\u0000", "t": "\ud800"}}`, "", ""},
		{`{"feature_name": "open", "input_data": null}`, "application/vnd.api+json", ""},
		{`{"feature_name": "open"}`, "", "\xff\x00"},
		{`{"feature_name": "open", "input_data": [1]}`, "", strings.Repeat("k", 256)},
		{`{"feature_name": "open", "input_data": "x"}`, "", ""},
		{`{"feature_name": "nope", "input_data": {}}`, "", ""},
		{`{"feature_name": "  ", "input_data": {}}`, "", ""},
		{`{"feature_name": 1}`, "", ""},
		{`{"feature_name": "open", "extra": 1}`, "", ""},
		{`{"feature_name": "open"} {"feature_name": "open"}`, "", ""},
		{`{"feature_name": "open"}]`, "", ""},
		{`{"feature_name": "open"} }}`, "", ""},
		{`{"feature_name": "open", "webhook_url": "https://hooks.example.com/x"}`, "", ""},
		{`{"feature_name": "open\u0000", "webhook_url": "\u0000"}`, "", ""},
		{`{"feature_name": "open"`, "", ""},
		{`[]`, "", ""},
		{``, "", ""},
		{"\x00\xff", "", ""},
		{`{"feature_name": "open"}`, "text/plain", ""},
		{`{"feature_name": "open"}`, ";;;", ""},
		{`{"feature_name": "open", "input_data": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, "", ""},
		{`{"feature_name": "open", "input_data": {"s": "` + strings.Repeat("x", fuzzMaxBody) + `"}}`, "", ""},
	} {
		f.Add([]byte(s.body), s.contentType, s.key)
	}
	srv := newFuzzServer(f, nil)
	f.Fuzz(func(t *testing.T, body []byte, contentType, key string) {
		srv.reset()
		req := httptest.NewRequest(http.MethodPost, "/api/v1/jobs", bytes.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		rec := srv.do(req)
		code := requireAnswer(t, rec)

		mt, _, ctErr := mime.ParseMediaType(contentType)
		jsonCT := contentType == "" || ctErr == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
		trimmed := bytes.TrimSpace(body)
		if jsonCT && len(body) <= fuzzMaxBody && (len(trimmed) == 0 || !json.Valid(trimmed)) {
			require.Equal(t, http.StatusBadRequest, rec.Code, "%s", rec.Body)
			// "000" is a 0 (of the wrong type) followed by more: either code says so.
			require.Contains(t, []string{codeInvalidJSON, codeInvalidRequest}, code, "%s", rec.Body)
		}
		if rec.Code != http.StatusAccepted {
			require.Empty(t, srv.store.applied, "a refused request stores nothing")
			return
		}

		var ok struct {
			Success    bool   `json:"success"`
			JobID      string `json:"job_id"`
			MonitorURL string `json:"monitor_url"`
			UIURL      string `json:"ui_url"`
			Status     string `json:"status"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &ok))
		require.True(t, ok.Success)
		require.Equal(t, string(store.JobPending), ok.Status)
		require.Equal(t, "ws://example.com/ws/"+ok.JobID, ok.MonitorURL)
		require.Equal(t, "http://example.com/ui/jobs/"+ok.JobID, ok.UIURL)

		require.Len(t, srv.store.applied, 1)
		c := srv.store.applied[0]
		require.True(t, c.Create)
		require.Equal(t, ok.JobID, c.Job.ID)
		require.Equal(t, key, c.IdempotencyKey)
		var sent struct {
			FeatureName string `json:"feature_name"`
		}
		require.NoError(t, json.Unmarshal(trimmed, &sent))
		require.Equal(t, sent.FeatureName, c.Job.FeatureName)
		feat, found := srv.reg.Feature(c.Job.FeatureName)
		require.True(t, found)

		input := c.Job.Input
		require.Nil(t, store.CheckJSON(input), "stored input %s", input)
		dec := json.NewDecoder(bytes.NewReader(input))
		dec.UseNumber()
		var v any
		require.NoError(t, dec.Decode(&v))
		_, isObject := v.(map[string]any)
		require.True(t, isObject, "stored input %s", input)
		require.Empty(t, feat.Input.Validate(v), "stored input %s", input)
	})
}

// FuzzResumeJob posts any body to POST /api/v1/jobs/{id}/resume with any id, the fakes answering with
// each of the errors resume can return. Every answer is a 4xx in the error envelope (the fakes never
// succeed); Resume is called, with the canonical id, exactly when the id is a UUID and the body is
// empty or one UTF-8 JSON object of the resume fields (from_step without NUL); otherwise the answer
// is 400 (413 past the body limit).
func FuzzResumeJob(f *testing.F) {
	id := "0f8fad5b-d9cb-469f-a165-70867728950e"
	for _, s := range []struct {
		id, body string
		err      uint8
	}{
		{id, ``, 0},
		{id, `{"from_step": "b", "input_data": {"business_name": "Acme"}}`, 1},
		{id, `{"from_step": 1}`, 2},
		{id, `{"input_data": {"a": 1e999999}}`, 3},
		{id, `{"unknown": true}`, 4},
		{id, `{} []`, 0},
		{id, "\x00", 0},
		{id, `{"from_step": "a\u0000"}`, 1},
		{id, `{"from_step": "a"}]`, 1},
		{id, "{\"from_step\": \"\xff\"}", 1},
		{strings.ToUpper(id), `{}`, 0},
		{"{" + id + "}", `{}`, 1},
		{"urn:uuid:" + id, `{}`, 1},
		{strings.ReplaceAll(id, "-", ""), `{}`, 2},
		{"not-a-uuid", `{}`, 0},
		{"", `{}`, 0},
		{"../../health", `{}`, 0},
		{"\xff", `{}`, 0},
	} {
		f.Add(s.id, []byte(s.body), s.err)
	}
	errs := []error{
		orchestrator.ErrJobNotFound, orchestrator.ErrNotResumable, orchestrator.ErrStepNotFound,
		&orchestrator.InputError{Fields: nil}, orchestrator.ErrAlreadyTerminal, orchestrator.ErrIdempotencyInFlight,
	}
	servers := make([]*fuzzServer, len(errs))
	for i, err := range errs {
		servers[i] = newFuzzServer(f, err)
	}
	f.Fuzz(func(t *testing.T, id string, body []byte, which uint8) {
		srv := servers[int(which)%len(servers)]
		srv.reset()
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		req.URL = &url.URL{Path: "/api/v1/jobs/" + id + "/resume"}
		req.RequestURI = req.URL.RequestURI()
		rec := srv.do(req)
		code := requireAnswer(t, rec)
		if rec.Code == http.StatusNotFound && code == codeNotFound {
			return // the id held a "/": another route, or none
		}

		u, err := uuid.Parse(id)
		validID := err == nil && len(id) == 36
		trimmed := bytes.TrimSpace(body)
		var rb resumeBody
		validBody := len(body) <= fuzzMaxBody && utf8.Valid(body) &&
			(len(trimmed) == 0 || json.Valid(trimmed) && decodesInto(trimmed, &rb) && !strings.ContainsRune(rb.FromStep, 0))
		if validID && validBody {
			require.Equal(t, []string{"Resume " + u.String()}, srv.jobs.calls, "%s", rec.Body)
		} else {
			require.Empty(t, srv.jobs.calls, "%s", rec.Body)
			require.Contains(t, []int{http.StatusBadRequest, http.StatusRequestEntityTooLarge}, rec.Code, "%s", rec.Body)
		}
	})
}

// decodesInto reports whether body, one JSON value, decodes into dst with no unknown field.
func decodesInto(body []byte, dst any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(dst) == nil
}

// FuzzCursor decodes any ?cursor= value. decodeCursor either fails, and GET /api/v1/jobs answers 400
// invalid_query without listing, or yields a cursor at a UTC microsecond from 1970 to the end of 9999
// with a UUID, which the handler hands to ListJobs unchanged and whose re-encoding decodes to the same
// cursor.
func FuzzCursor(f *testing.F) {
	id := "0f8fad5b-d9cb-469f-a165-70867728950e"
	for _, s := range []string{
		encodeCursor(store.Cursor{CreatedAt: time.Date(2024, 1, 31, 12, 0, 0, 123456000, time.UTC), ID: id}),
		encodeCursor(store.Cursor{CreatedAt: time.Unix(0, 0).UTC(), ID: id}),
		encodeCursor(store.Cursor{CreatedAt: time.UnixMicro(maxCursorMicros).UTC(), ID: id}),
		base64.RawURLEncoding.EncodeToString([]byte("253402300800000000|" + id)),
		base64.RawURLEncoding.EncodeToString([]byte("-1|" + id)),
		base64.RawURLEncoding.EncodeToString([]byte("-9223372036854775808|" + id)),
		base64.RawURLEncoding.EncodeToString([]byte("9223372036854775808|" + id)),
		base64.RawURLEncoding.EncodeToString([]byte("+0001|" + id)),
		base64.RawURLEncoding.EncodeToString([]byte("1|" + strings.ToUpper(id))),
		base64.RawURLEncoding.EncodeToString([]byte("1|urn:uuid:" + id)),
		base64.RawURLEncoding.EncodeToString([]byte("1|{" + id + "}")),
		base64.RawURLEncoding.EncodeToString([]byte("1|" + id + "|x")),
		base64.RawURLEncoding.EncodeToString([]byte("1|\x00")),
		base64.StdEncoding.EncodeToString([]byte("1|" + id)),
		"!!!", "", "AAAA", "\xff",
	} {
		f.Add(s)
	}
	srv := newFuzzServer(f, nil)
	minTime, maxTime := time.Unix(0, 0).UTC(), time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		srv.reset()
		rec := srv.do(httptest.NewRequest(http.MethodGet, "/api/v1/jobs?cursor="+url.QueryEscape(s), nil))
		code := requireAnswer(t, rec)
		if s == "" {
			require.Equal(t, http.StatusOK, rec.Code)
			require.Len(t, srv.jobs.listed, 1)
			require.Nil(t, srv.jobs.listed[0].After)
			return
		}
		if err != nil {
			require.Nil(t, c)
			require.Equal(t, http.StatusBadRequest, rec.Code, "%s", rec.Body)
			require.Equal(t, codeInvalidQuery, code)
			require.Empty(t, srv.jobs.listed)
			return
		}
		require.Equal(t, http.StatusOK, rec.Code, "%s", rec.Body)
		require.Len(t, srv.jobs.listed, 1)
		require.Equal(t, c, srv.jobs.listed[0].After)

		require.Equal(t, time.UTC, c.CreatedAt.Location())
		require.False(t, c.CreatedAt.Before(minTime), "%v", c.CreatedAt)
		require.False(t, c.CreatedAt.After(maxTime), "%v", c.CreatedAt)
		require.Zero(t, c.CreatedAt.Nanosecond()%1000, "microseconds")
		_, err = uuid.Parse(c.ID)
		require.NoError(t, err)

		again, err := decodeCursor(encodeCursor(*c))
		require.NoError(t, err)
		require.Equal(t, c, again)
		require.Equal(t, encodeCursor(*c), encodeCursor(*again))
	})
}

// A body with a "]" or "}" after the object was taken for the object alone (json.Decoder.More is
// false before a closing bracket): POST /api/v1/jobs created a job from `{"feature_name": "f"}]`.
func TestBodyWithTrailingBracketIsRefused(t *testing.T) {
	t.Parallel()
	srv := newFuzzServer(t, orchestrator.ErrNotResumable)
	id := uuid.NewString()
	for _, tc := range []struct{ path, body string }{
		{"/api/v1/jobs", `{"feature_name": "open"}]`},
		{"/api/v1/jobs", `{"feature_name": "open"} }`},
		{"/api/v1/jobs/" + id + "/resume", `{"from_step": "a"}]`},
	} {
		rec := srv.do(httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body)))
		require.Equal(t, http.StatusBadRequest, rec.Code, "%s: %s", tc.body, rec.Body)
		require.Equal(t, codeInvalidJSON, requireAnswer(t, rec))
	}
	require.Empty(t, srv.store.applied)
	require.Empty(t, srv.jobs.calls)
}

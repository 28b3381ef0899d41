package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/health"
	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/view"
)

// fakeJobs answers every call with err; calls the test does not expect panic (nil interface).
type fakeJobs struct {
	Jobs
	err    error
	calls  []string
	scopes []store.Scope
}

func (f *fakeJobs) GetJob(_ context.Context, scope store.Scope, id string) (*orchestrator.JobView, error) {
	f.calls = append(f.calls, "GetJob "+id)
	f.scopes = append(f.scopes, scope)
	return nil, f.err
}

func (f *fakeJobs) Resume(_ context.Context, scope store.Scope, id string, _ orchestrator.ResumeRequest) (*orchestrator.JobView, error) {
	f.calls = append(f.calls, "Resume "+id)
	f.scopes = append(f.scopes, scope)
	return nil, f.err
}

func (f *fakeJobs) ListJobs(_ context.Context, filter store.JobFilter) ([]store.Job, *store.Cursor, error) {
	f.calls = append(f.calls, "ListJobs")
	f.scopes = append(f.scopes, filter.Scope)
	return nil, nil, f.err
}

// Each key's requests reach the core in its tenant's scope; admin keys see every tenant, or the
// one named by ?tenant=; a key in the query string is refused outside /ws/ and /monitoring/.
func TestCallerScopes(t *testing.T) {
	t.Parallel()
	keys := auth.NewKeyring(auth.Key{Tenant: "acme", Secret: "k-acme"}, auth.Key{Tenant: "ops", Secret: "k-root", Admin: true})
	id := uuid.NewString()
	for _, tc := range []struct {
		name, path, key string
		wantStatus      int
		wantCode        string
		wantScope       store.Scope
	}{
		{"tenant get", "/api/v1/jobs/" + id, "k-acme", 404, "job_not_found", store.TenantScope("acme")},
		{"tenant list", "/api/v1/jobs", "k-acme", 200, "", store.TenantScope("acme")},
		{"tenant lists itself", "/api/v1/jobs?tenant=acme", "k-acme", 200, "", store.TenantScope("acme")},
		{"tenant lists another", "/api/v1/jobs?tenant=globex", "k-acme", 403, "forbidden", store.Scope{}},
		{"admin get", "/api/v1/jobs/" + id, "k-root", 404, "job_not_found", store.AllTenants},
		{"admin list", "/api/v1/jobs", "k-root", 200, "", store.AllTenants},
		{"admin list one tenant", "/api/v1/jobs?tenant=globex", "k-root", 200, "", store.TenantScope("globex")},
		{"bad tenant name", "/api/v1/jobs?tenant=a%20b", "k-root", 400, "invalid_query", store.Scope{}},
		{"key in the query", "/api/v1/jobs?api_key=k-acme", "", 401, "unauthorized", store.Scope{}},
		{"key in the query besides a header", "/api/v1/jobs?api_key=k-acme", "k-acme", 401, "unauthorized", store.Scope{}},
		{"unknown key", "/api/v1/jobs", "k-nope", 401, "unauthorized", store.Scope{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			jobs := &fakeJobs{err: orchestrator.ErrJobNotFound}
			if strings.HasSuffix(tc.path, "jobs") || strings.Contains(tc.path, "jobs?") {
				jobs.err = nil
			}
			s := New(Deps{Jobs: jobs, Health: fakeHealth{}, Metrics: metrics.New(func() float64 { return 0 }),
				Settings: Settings{MaxBodyBytes: 1 << 20, Keys: keys}}, Options{})
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			if tc.key != "" {
				req.Header.Set("Authorization", "Bearer "+tc.key)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			require.Equal(t, tc.wantStatus, rec.Code, rec.Body.String())
			if tc.wantCode != "" {
				require.Contains(t, rec.Body.String(), `"code":"`+tc.wantCode+`"`)
			}
			if tc.wantScope == (store.Scope{}) {
				require.Empty(t, jobs.calls, "a refused request reaches nothing")
				return
			}
			require.Equal(t, []store.Scope{tc.wantScope}, jobs.scopes)
		})
	}
}

type fakeHealth struct{ down bool }

func (fakeHealth) Run(context.Context) health.Report  { return health.Report{Status: "ok"} }
func (fakeHealth) Status(context.Context) string      { return health.StatusOK }
func (h fakeHealth) Unavailable(context.Context) bool { return h.down }
func (fakeHealth) StepWaits(context.Context, string) map[string]view.Waiting {
	return nil
}

// The handlers depend on narrow interfaces, so they run on fakes: domain errors map to the
// contract's statuses and codes, and an unknown failure is a 503 when a backend is down.
func TestHandlersOnFakes(t *testing.T) {
	t.Parallel()
	reg, err := registry.Parse("r.yaml", []byte("services: {sim: {kind: mock}}\nfeatures: {f: {steps: [{name: a, service: sim}]}}\n"),
		func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	id := uuid.NewString()
	for _, tc := range []struct {
		name       string
		err        error
		down       bool
		method     string
		path       string
		wantStatus int
		wantCode   string
	}{
		{"unknown job", orchestrator.ErrJobNotFound, false, http.MethodGet, "/api/v1/jobs/" + id, http.StatusNotFound, "job_not_found"},
		{"not resumable", orchestrator.ErrNotResumable, false, http.MethodPost, "/api/v1/jobs/" + id + "/resume", http.StatusConflict, "job_not_resumable"},
		{"database down", context.DeadlineExceeded, true, http.MethodGet, "/api/v1/jobs/" + id, http.StatusServiceUnavailable, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			jobs := &fakeJobs{err: tc.err}
			s := New(Deps{Jobs: jobs, Health: fakeHealth{down: tc.down}, Metrics: metrics.New(func() float64 { return 0 }), Registry: reg, Settings: Settings{MaxBodyBytes: 1 << 20}}, Options{})
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader("{}")))
			require.Equal(t, tc.wantStatus, rec.Code, rec.Body.String())
			var body struct {
				Success bool `json:"success"`
				Error   struct {
					Code string `json:"code"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), rec.Body.String())
			require.False(t, body.Success)
			if tc.wantCode != "" {
				require.Equal(t, tc.wantCode, body.Error.Code)
			}
			require.Len(t, jobs.calls, 1)
		})
	}
}

// HEAD works wherever GET does, without a body.
func TestHeadIsGetWithoutBody(t *testing.T) {
	t.Parallel()
	s := New(Deps{Health: fakeHealth{}, Metrics: metrics.New(func() float64 { return 0 })}, Options{})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, err := http.NewRequestWithContext(context.Background(), http.MethodHead, srv.URL+"/health", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Empty(t, body)
}

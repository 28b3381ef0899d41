package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
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

// These tests hold the OpenAPI document (openapi.json) and the server to each other: the document is
// a valid OpenAPI 3.0 document; the engine's routes are exactly the documented operations (plus the
// browser pages and asynqmon, listed below); every error code the package answers with is in the
// document; and real requests to every operation, through the real router over real Postgres and
// Redis, have their requests and answers validated against the document, until every documented
// status of every operation has been seen.

// loadOpenAPI parses the embedded document and validates it.
func loadOpenAPI(t testing.TB) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openAPIDoc)
	require.NoError(t, err)
	require.NoError(t, doc.Validate(context.Background()))
	return doc
}

func TestOpenAPIDocumentValid(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	require.Equal(t, "3.0.3", doc.OpenAPI)

	// The document is served as is, without a key, as JSON.
	s := New(Deps{Metrics: metrics.New(func() float64 { return 0 }), Settings: Settings{
		MaxBodyBytes: 1 << 20, Keys: auth.NewKeyring(auth.Key{Tenant: "acme", Secret: "acme-key"}),
	}}, Options{})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/openapi.json", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, openAPIDoc, rec.Body.Bytes(), "without a registry, the document as it is")

	// With a registry, the document also publishes each feature's input schema, as written.
	reg, err := registry.Parse("r.yaml", []byte(`services: {sim: {kind: mock}}
features:
  greet:
    input: {type: object, required: [name], properties: {name: {type: string, minLength: 1}}}
    steps: [{name: a, service: sim}]
  bare:
    steps: [{name: a, service: sim}]
`), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	s = New(Deps{Metrics: metrics.New(func() float64 { return 0 }), Registry: reg, Settings: Settings{MaxBodyBytes: 1 << 20}}, Options{})
	rec = httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/openapi.json", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	var served map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &served))
	require.JSONEq(t, `{"greet": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}},
		"bare": {"type": "object"}}`, string(served[featureInputsKey]))
	var embedded map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(openAPIDoc, &embedded))
	delete(served, featureInputsKey)
	require.Equal(t, embedded, served, "the rest is the embedded document")
	_, err = openapi3.NewLoader().LoadFromData(rec.Body.Bytes())
	require.NoError(t, err, "the served document still loads")

	ids := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			require.NotEmpty(t, op.OperationID, "%s %s", method, path)
			require.False(t, ids[op.OperationID], "operationId %s twice", op.OperationID)
			ids[op.OperationID] = true
			for status, ref := range op.Responses.Map() {
				code, err := strconv.Atoi(status)
				require.NoError(t, err, "%s %s: status %s", method, path, status)
				if code < 400 || strings.HasSuffix(path, "/health/services") && code == 503 {
					continue // a health report, not an error
				}
				// Every error answer is the envelope.
				mt := ref.Value.Content.Get("application/json")
				require.NotNil(t, mt, "%s %s %s: no JSON body", method, path, status)
				require.True(t, isEnvelope(mt.Schema), "%s %s %s: not the ErrorEnvelope", method, path, status)
			}
		}
	}
	for _, name := range []string{"NoSuchRoute", "MethodNotAllowed"} {
		require.True(t, isEnvelope(doc.Components.Responses[name].Value.Content.Get("application/json").Schema), name)
	}
}

// isEnvelope reports whether a schema is the ErrorEnvelope or narrows it (allOf).
func isEnvelope(s *openapi3.SchemaRef) bool {
	const ref = "#/components/schemas/ErrorEnvelope"
	return s != nil && (s.Ref == ref || s.Value != nil && len(s.Value.AllOf) > 0 && s.Value.AllOf[0].Ref == ref)
}

// undocumentedRoutes are the engine's routes that are not part of the REST API, by path: the browser
// pages (HTML) and the asynqmon UI with its own API. Everything else must be in the document.
var undocumentedRoutes = map[string]string{
	"/":                  "redirects to the browser monitor",
	"/ui":                "redirects to the browser monitor",
	"/ui/":               "browser monitor page (HTML)",
	"/ui/jobs/{id}":      "browser monitor page (HTML)",
	"/ui/static/{file}":  "browser monitor assets",
	"/monitoring":        "redirects to asynqmon",
	"/monitoring/{path}": "asynqmon's UI and API (third party), read-only for non-admin keys",
}

// engineRoutes returns "METHOD /path" of every route of the engine s.Handler builds, with Gin's
// :param and *param written {param} as in the document.
func engineRoutes(t testing.TB, s *Server) []string {
	t.Helper()
	probe := &routesProbe{}
	req := httptest.NewRequest(http.MethodGet, "/api/v1/openapi.json", nil)
	req = req.WithContext(context.WithValue(req.Context(), routesProbeKey{}, probe))
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code)
	require.NotEmpty(t, probe.routes)
	param := regexp.MustCompile(`[:*]([A-Za-z_]+)`)
	out := make([]string, 0, len(probe.routes))
	for _, r := range probe.routes {
		out = append(out, r.Method+" "+param.ReplaceAllString(r.Path, "{$1}"))
	}
	sort.Strings(out)
	return out
}

// A route cannot be added without documenting it, nor documented without existing.
func TestOpenAPIRoutesMatchEngine(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	sort.Strings(documented)

	s := New(Deps{Metrics: metrics.New(func() float64 { return 0 }), Settings: Settings{MaxBodyBytes: 1 << 20}},
		Options{Monitoring: http.NotFoundHandler()})
	var served []string
	excluded := map[string]bool{}
	for _, r := range engineRoutes(t, s) {
		_, path, _ := strings.Cut(r, " ")
		if _, ok := undocumentedRoutes[path]; ok {
			excluded[path] = true
			continue
		}
		served = append(served, r)
	}
	require.Equal(t, documented, served, "the engine's routes and the document's operations differ")
	for path, why := range undocumentedRoutes {
		require.True(t, excluded[path], "%s (%s) is listed as undocumented but is not a route any more", path, why)
	}
	// HEAD is served wherever GET is, not as a route of its own.
	require.NotContains(t, strings.Join(served, "\n"), "HEAD ")
}

// Every error code the package can answer with is in the document's ErrorCode enum, and the enum
// holds no code that nothing answers with (beyond the codes of errors answered before routing).
func TestOpenAPIErrorCodes(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	enum := map[string]bool{}
	for _, v := range doc.Components.Schemas["ErrorCode"].Value.Enum {
		enum[v.(string)] = true
	}

	// The codes in the source: constants named code*, literal codes given to abort, and the values of
	// statusErrorCodes (the codes of answers known only by their status).
	inSource := map[string]bool{}
	addLit := func(e ast.Expr) {
		if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			v, err := strconv.Unquote(lit.Value)
			require.NoError(t, err)
			inSource[v] = true
		}
	}
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	require.NoError(t, err)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, e.Name(), nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ValueSpec:
				for i, name := range n.Names {
					switch {
					case i >= len(n.Values):
					case len(name.Name) > 4 && strings.HasPrefix(name.Name, "code"):
						addLit(n.Values[i])
					case name.Name == "statusErrorCodes":
						if m, ok := n.Values[i].(*ast.CompositeLit); ok {
							for _, el := range m.Elts {
								if kv, ok := el.(*ast.KeyValueExpr); ok {
									addLit(kv.Value)
								}
							}
						}
					}
				}
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "abort" && len(n.Args) >= 3 {
					addLit(n.Args[2])
				}
			}
			return true
		})
	}
	require.Contains(t, inSource, "job_not_found", "the source scan found the package's codes")
	for code := range inSource {
		require.True(t, enum[code], "error code %q is answered but not in the document's ErrorCode enum", code)
	}
	// Codes of errors net/http meets before any route (answered as envelopes by package serve), and
	// asynqmon's 409 (its plain-text errors become envelopes with the code of their status).
	elsewhere := map[string]bool{
		"bad_request": true, "headers_too_large": true, "not_implemented": true, "http_version_not_supported": true,
		"conflict": true,
	}
	for code := range enum {
		require.True(t, inSource[code] || elsewhere[code], "the document lists error code %q that nothing answers with", code)
	}
}

// oaCall is one request of TestOpenAPIOperations and what the answer must be.
type oaCall struct {
	name   string
	method string
	path   string   // with the query
	key    string   // sent as Authorization: Bearer; "" sends none
	header []string // more header name, value pairs
	body   string   // sent as application/json unless header sets a Content-Type
	status int      // expected status
	code   string   // expected error code; "" for a success
	// docRejects: the document itself says the request is invalid (the server must refuse it too).
	docRejects bool
	// hold keeps a 101 connection open until the test ends.
	hold bool
}

// oaChecker sends calls and validates them against the document, recording which statuses of which
// operations were seen.
type oaChecker struct {
	doc    *openapi3.T
	router routers.Router
	opts   *openapi3filter.Options
	seen   map[string]map[string]bool // operationId -> statuses
}

func newOAChecker(t testing.TB) *oaChecker {
	t.Helper()
	doc := loadOpenAPI(t)
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	uuidFormat := openapi3.NewCallbackValidator(func(s string) error {
		_, err := uuid.Parse(s)
		return err
	})
	return &oaChecker{
		doc: doc, router: router, seen: map[string]map[string]bool{},
		opts: &openapi3filter.Options{
			IncludeResponseStatus:   true, // an undocumented status is an error
			MultiError:              true,
			AuthenticationFunc:      credentialPresent,
			SchemaValidationOptions: []openapi3.SchemaValidationOption{openapi3.WithStringFormatValidator("uuid", uuidFormat)},
		},
	}
}

// credentialPresent accepts a security scheme when the request carries a credential where the scheme
// says (whether the key is valid is the server's business).
func credentialPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	r := in.RequestValidationInput.Request
	ss := in.SecurityScheme
	switch {
	case ss.Type == "http" && ss.Scheme == "bearer":
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
			return nil
		}
	case ss.Type == "apiKey" && ss.In == "header":
		if r.Header.Get(ss.Name) != "" {
			return nil
		}
	case ss.Type == "apiKey" && ss.In == "query":
		if r.URL.Query().Get(ss.Name) != "" {
			return nil
		}
	}
	return fmt.Errorf("no %s credential", in.SecuritySchemeName)
}

// do sends the call to the server at base, checks the status and code, validates the request and the
// answer against the document, and returns the answer's headers and body.
func (oc *oaChecker) do(t *testing.T, base string, c oaCall) (http.Header, []byte) {
	t.Helper()
	newReq := func() *http.Request {
		var body io.Reader
		if c.body != "" {
			body = strings.NewReader(c.body)
		}
		req, err := http.NewRequest(c.method, base+c.path, body)
		require.NoError(t, err)
		if c.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.key != "" {
			req.Header.Set("Authorization", "Bearer "+c.key)
		}
		for i := 0; i+1 < len(c.header); i += 2 {
			req.Header.Set(c.header[i], c.header[i+1])
		}
		return req
	}
	res, err := http.DefaultClient.Do(newReq())
	require.NoError(t, err, c.name)
	var body []byte
	if res.StatusCode == http.StatusSwitchingProtocols {
		if c.hold {
			t.Cleanup(func() { _ = res.Body.Close() })
		} else {
			require.NoError(t, res.Body.Close())
		}
	} else {
		body, err = io.ReadAll(res.Body)
		require.NoError(t, err)
		require.NoError(t, res.Body.Close())
	}
	require.Equal(t, c.status, res.StatusCode, "%s: %s", c.name, body)
	if c.code != "" {
		var env struct {
			Error struct{ Code string } `json:"error"`
		}
		require.NoError(t, json.Unmarshal(body, &env), "%s: %s", c.name, body)
		require.Equal(t, c.code, env.Error.Code, "%s: %s", c.name, body)
	}

	ctx := context.Background()
	vreq := newReq()
	route, params, err := oc.router.FindRoute(vreq)
	if errors.Is(err, routers.ErrPathNotFound) || errors.Is(err, routers.ErrMethodNotAllowed) {
		// No operation: the answer must be the document's answer for a missing route or method.
		name := map[bool]string{true: "NoSuchRoute", false: "MethodNotAllowed"}[errors.Is(err, routers.ErrPathNotFound)]
		want := map[string]int{"NoSuchRoute": http.StatusNotFound, "MethodNotAllowed": http.StatusMethodNotAllowed}[name]
		require.Equal(t, want, res.StatusCode, "%s: the document has no operation, the server answered", c.name)
		mt := oc.doc.Components.Responses[name].Value.Content.Get(res.Header.Get("Content-Type"))
		require.NotNil(t, mt, "%s: content type %s", c.name, res.Header.Get("Content-Type"))
		var v any
		require.NoError(t, json.Unmarshal(body, &v))
		require.NoError(t, mt.Schema.Value.VisitJSON(v), "%s: %s", c.name, body)
		oc.mark("(no route)", res.StatusCode)
		return res.Header, body
	}
	require.NoError(t, err, "%s: the document has no route for %s %s", c.name, c.method, c.path)

	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: oc.opts}
	reqErr := openapi3filter.ValidateRequest(ctx, in)
	if c.docRejects {
		require.Error(t, reqErr, "%s: the document accepts a request the server refuses", c.name)
	} else if reqErr != nil {
		t.Fatalf("%s: the document refuses a request the server serves: %s", c.name, clip(reqErr))
	}
	resIn := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: res.StatusCode, Header: res.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: oc.opts,
	}
	if err := openapi3filter.ValidateResponse(ctx, resIn); err != nil {
		t.Fatalf("%s: the answer %d does not match the document: %s\n%s", c.name, res.StatusCode, clip(err), clip(errors.New(string(body))))
	}
	oc.mark(route.Operation.OperationID, res.StatusCode)
	return res.Header, body
}

// clip shortens an error message that may quote a large value.
func clip(err error) string {
	const maxLen = 3000
	if s := err.Error(); len(s) > maxLen {
		return s[:maxLen] + "..."
	}
	return err.Error()
}

func (oc *oaChecker) mark(op string, status int) {
	if oc.seen[op] == nil {
		oc.seen[op] = map[string]bool{}
	}
	oc.seen[op][strconv.Itoa(status)] = true
}

// requireEveryStatusSeen fails unless every documented status of every operation was answered.
func (oc *oaChecker) requireEveryStatusSeen(t *testing.T) {
	t.Helper()
	var missing []string
	for path, item := range oc.doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if !oc.seen[op.OperationID][status] {
					missing = append(missing, fmt.Sprintf("%s %s (%s) %s", method, path, op.OperationID, status))
				}
			}
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "documented answers no test request produced")
	require.True(t, oc.seen["(no route)"]["404"] && oc.seen["(no route)"]["405"])
}

// failingJobs is a core whose every call fails with err (a database that is down, or a bug).
type failingJobs struct{ err error }

func (f failingJobs) CreateJob(context.Context, orchestrator.CreateRequest) (*orchestrator.JobView, bool, error) {
	return nil, false, f.err
}
func (f failingJobs) GetJob(context.Context, store.Scope, string) (*orchestrator.JobView, error) {
	return nil, f.err
}
func (f failingJobs) Job(context.Context, store.Scope, string) (*store.Job, error) { return nil, f.err }
func (f failingJobs) ListJobs(context.Context, store.JobFilter) ([]store.Job, *store.Cursor, error) {
	return nil, nil, f.err
}
func (f failingJobs) Events(context.Context, store.Scope, string, int64, int) ([]store.Event, error) {
	return nil, f.err
}
func (f failingJobs) EventLog(context.Context, string, int64, int) ([]store.Event, error) {
	return nil, f.err
}
func (f failingJobs) LastSeqs(context.Context, []string) (map[string]int64, error) { return nil, f.err }
func (f failingJobs) Resume(context.Context, store.Scope, string, orchestrator.ResumeRequest) (*orchestrator.JobView, error) {
	return nil, f.err
}
func (f failingJobs) Cancel(context.Context, store.Scope, string) (*orchestrator.JobView, error) {
	return nil, f.err
}

// downHealth reports Postgres down.
type downHealth struct{}

func (downHealth) Run(context.Context) health.Report {
	return health.Report{
		Status: health.StatusDown, Postgres: health.Check{Status: health.StatusDown, Error: health.Unreachable},
		Redis: health.Check{Status: health.StatusOK}, Queues: map[string]health.QueueCheck{},
		Services: map[string]health.ServiceCheck{}, Checked: time.Now().UTC(),
	}
}
func (downHealth) Status(context.Context) string    { return health.StatusDown }
func (downHealth) Unavailable(context.Context) bool { return true }
func (downHealth) StepWaits(context.Context, string) map[string]view.Waiting {
	return nil
}

// serveDeps serves a Server over d for the test and returns it with its URL.
func serveDeps(t testing.TB, d Deps) (*Server, string) {
	t.Helper()
	srv := New(d, Options{})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Stop(ctx)
		hs.Close()
	})
	return srv, hs.URL
}

// wsUpgrade are the headers of a WebSocket handshake.
func wsUpgrade() []string {
	k := make([]byte, 16)
	_, _ = rand.Read(k)
	return []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13",
		"Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(k)}
}

// waitStatus polls GET /api/v1/jobs/{id} until the job has status.
func (a *testAPI) waitStatus(t testing.TB, id, key, status string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var res struct{ Job struct{ Status string } }
		a.do(t, http.MethodGet, "/api/v1/jobs/"+id, nil, &res, "Authorization", "Bearer "+key)
		return res.Job.Status == status
	}, 20*time.Second, 10*time.Millisecond, "job %s never became %s", id, status)
}

// Every operation, with its successes and its errors, answers as the document says.
func TestOpenAPIOperations(t *testing.T) {
	t.Parallel()
	oc := newOAChecker(t)
	const acme, globex = "acme-key", "globex-key"
	keys := []string{"acme:" + acme, "globex:" + globex}

	// A deployment without workers (jobs stay where the test puts them) and one whose jobs run to
	// the end (attempt history, outputs, finished jobs).
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{APIKeys: keys})
	runEnv := newTestEnv(t)
	runAPI := runEnv.startAPI(t, nodeOptions{APIKeys: keys, Runner: true})
	do := func(base string, c oaCall) (http.Header, []byte) { return oc.do(t, base, c) }
	u := api.URL
	missing := uuid.NewString()

	// Health, metrics and the document.
	for _, p := range []string{"/health", "/api/v1/health"} {
		do(u, oaCall{name: "live " + p, method: "GET", path: p, status: 200})
	}
	for _, p := range []string{"/health/services", "/api/v1/health/services"} {
		_, b := do(u, oaCall{name: "services without key " + p, method: "GET", path: p, status: 200})
		require.NotContains(t, string(b), "postgres")
		_, b = do(u, oaCall{name: "services with key " + p, method: "GET", path: p, key: acme, status: 200})
		require.Contains(t, string(b), "postgres")
	}
	do(u, oaCall{name: "metrics", method: "GET", path: "/metrics", key: acme, status: 200})
	do(u, oaCall{name: "metrics with X-API-Key", method: "GET", path: "/metrics", header: []string{"X-API-Key", acme}, status: 200})
	do(u, oaCall{name: "metrics without key", method: "GET", path: "/metrics", status: 401, code: "unauthorized", docRejects: true})
	do(u, oaCall{name: "metrics with a key in the query", method: "GET", path: "/metrics?api_key=" + acme, key: acme, status: 401, code: "unauthorized"})
	do(u, oaCall{name: "openapi", method: "GET", path: "/api/v1/openapi.json", status: 200})

	// Routes and methods that do not exist.
	do(u, oaCall{name: "no route", method: "GET", path: "/api/v1/nope", key: acme, status: 404, code: "not_found"})
	do(u, oaCall{name: "no method", method: "DELETE", path: "/api/v1/jobs/" + missing, key: acme, status: 405, code: "method_not_allowed"})

	// POST /api/v1/jobs.
	create := `{"feature_name": "pipeline", "input_data": {"name": "acme"}}`
	h, b := do(u, oaCall{name: "create", method: "POST", path: "/api/v1/jobs", key: acme, body: create, status: 202})
	require.Empty(t, h.Get("Idempotent-Replayed"))
	var accepted struct {
		JobID string `json:"job_id"`
	}
	require.NoError(t, json.Unmarshal(b, &accepted))
	pending := accepted.JobID
	do(u, oaCall{name: "create with X-API-Key", method: "POST", path: "/api/v1/jobs", header: []string{"X-API-Key", acme}, body: create, status: 202})
	do(u, oaCall{name: "create, input_data absent", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "pipeline"}`, status: 422, code: "invalid_input"})
	_, b = do(u, oaCall{name: "create, invalid input", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "pipeline", "input_data": {"name": ""}}`, status: 422, code: "invalid_input"})
	require.Contains(t, string(b), `"field"`)
	do(u, oaCall{name: "create, NUL in input", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "pipeline", "input_data": {"name": "a\u0000b"}}`, status: 422, code: "invalid_input"})
	h, _ = do(u, oaCall{name: "create with a key", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Idempotency-Key", "oa-replay"}, body: create, status: 202})
	require.Empty(t, h.Get("Idempotent-Replayed"))
	h, _ = do(u, oaCall{name: "create, key replayed", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Idempotency-Key", "oa-replay"}, body: create, status: 202})
	require.Equal(t, "true", h.Get("Idempotent-Replayed"))
	do(u, oaCall{name: "create, key reused", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Idempotency-Key", "oa-replay"},
		body: `{"feature_name": "pipeline", "input_data": {"name": "other"}}`, status: 422, code: "idempotency_key_reused"})
	// A key whose first request is still creating its job: the record has no job yet.
	do(u, oaCall{name: "create with another key", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Idempotency-Key", "oa-inflight"}, body: create, status: 202})
	ctx := context.Background()
	rec, err := api.Node.Store.GetIdempotencyKey(ctx, "acme", "oa-inflight")
	require.NoError(t, err)
	rec.JobID, rec.CreatedAt = "", time.Now().UTC()
	require.NoError(t, api.Node.Store.Tx(ctx, func(tx store.Tx) error { return tx.UpdateIdempotencyKey(ctx, rec) }))
	h, _ = do(u, oaCall{name: "create, key in flight", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Idempotency-Key", "oa-inflight"}, body: create, status: 409, code: "idempotency_key_in_flight"})
	require.NotEmpty(t, h.Get("Retry-After"))
	do(u, oaCall{name: "create, key too long", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Idempotency-Key", strings.Repeat("k", 256)}, body: create, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "create, webhook not allowed", method: "POST", path: "/api/v1/jobs", key: acme,
		body: `{"feature_name": "pipeline", "input_data": {"name": "acme"}, "webhook_url": "https://hooks.example.com/cao"}`, status: 422, code: "webhook_not_allowed"})
	do(u, oaCall{name: "create, NUL in feature_name", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "pipe\u0000line"}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "create, unknown feature", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "nope"}`, status: 404, code: "feature_not_found"})
	do(u, oaCall{name: "create, malformed", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": `, status: 400, code: "invalid_json", docRejects: true})
	do(u, oaCall{name: "create, empty body", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Content-Type", "application/json"}, status: 400, code: "invalid_json", docRejects: true})
	do(u, oaCall{name: "create, unknown field", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "pipeline", "colour": 1}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "create, feature_name missing", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"input_data": {}}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "create, feature_name blank", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": "  "}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "create, feature_name a number", method: "POST", path: "/api/v1/jobs", key: acme, body: `{"feature_name": 7}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "create, not JSON", method: "POST", path: "/api/v1/jobs", key: acme, header: []string{"Content-Type", "text/plain"}, body: create, status: 415, code: "unsupported_media_type", docRejects: true})
	big := `{"feature_name": "pipeline", "input_data": {"name": "` + strings.Repeat("x", int(api.Node.Config.MaxBodyBytes)) + `"}}`
	do(u, oaCall{name: "create, too large", method: "POST", path: "/api/v1/jobs", key: acme, body: big, status: 413, code: "body_too_large"})
	do(u, oaCall{name: "create without key", method: "POST", path: "/api/v1/jobs", body: create, status: 401, code: "unauthorized", docRejects: true})
	do(u, oaCall{name: "create with an unknown key", method: "POST", path: "/api/v1/jobs", key: "nope", body: create, status: 401, code: "unauthorized"})
	do(u, oaCall{name: "create with a key in the query", method: "POST", path: "/api/v1/jobs?api_key=" + acme, key: acme, body: create, status: 401, code: "unauthorized"})

	// GET /api/v1/jobs/{id}, of a job that ran to the end (steps with outputs and attempt history).
	_, b = do(runAPI.URL, oaCall{name: "create to run", method: "POST", path: "/api/v1/jobs", key: acme, body: create, status: 202})
	require.NoError(t, json.Unmarshal(b, &accepted))
	done := accepted.JobID
	runAPI.waitStatus(t, done, acme, "COMPLETED")
	_, b = do(runAPI.URL, oaCall{name: "get completed", method: "GET", path: "/api/v1/jobs/" + done, key: acme, status: 200})
	require.Contains(t, string(b), `"attempt_history":[{`)
	do(u, oaCall{name: "get pending", method: "GET", path: "/api/v1/jobs/" + pending, key: acme, status: 200})
	do(u, oaCall{name: "get, another tenant's", method: "GET", path: "/api/v1/jobs/" + pending, key: globex, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "get missing", method: "GET", path: "/api/v1/jobs/" + missing, key: acme, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "get, bad id", method: "GET", path: "/api/v1/jobs/nope", key: acme, status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "get without key", method: "GET", path: "/api/v1/jobs/" + pending, status: 401, code: "unauthorized", docRejects: true})

	// GET /api/v1/jobs.
	_, b = do(u, oaCall{name: "list a page", method: "GET", path: "/api/v1/jobs?limit=1", key: acme, status: 200})
	var page struct {
		NextCursor *string `json:"next_cursor"`
	}
	require.NoError(t, json.Unmarshal(b, &page))
	require.NotNil(t, page.NextCursor)
	do(u, oaCall{name: "list the next page", method: "GET", path: "/api/v1/jobs?limit=1&cursor=" + *page.NextCursor, key: acme, status: 200})
	do(u, oaCall{name: "list filtered", method: "GET", path: "/api/v1/jobs?status=PENDING&feature=pipeline&tenant=acme", key: acme, status: 200})
	do(runAPI.URL, oaCall{name: "list completed", method: "GET", path: "/api/v1/jobs?status=COMPLETED", key: acme, status: 200})
	do(u, oaCall{name: "list empty", method: "GET", path: "/api/v1/jobs", key: globex, status: 200})
	do(u, oaCall{name: "list, bad status", method: "GET", path: "/api/v1/jobs?status=DONE", key: acme, status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "list, bad limit", method: "GET", path: "/api/v1/jobs?limit=0", key: acme, status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "list, limit too high", method: "GET", path: "/api/v1/jobs?limit=501", key: acme, status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "list, bad cursor", method: "GET", path: "/api/v1/jobs?cursor=nope", key: acme, status: 400, code: "invalid_query"})
	do(u, oaCall{name: "list, bad tenant", method: "GET", path: "/api/v1/jobs?tenant=a%20b", key: acme, status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "list another tenant", method: "GET", path: "/api/v1/jobs?tenant=globex", key: acme, status: 403, code: "forbidden"})
	do(u, oaCall{name: "list without key", method: "GET", path: "/api/v1/jobs", status: 401, code: "unauthorized", docRejects: true})

	// POST /api/v1/jobs/{id}/cancel and /resume, on jobs no worker touches.
	cancelPath := "/api/v1/jobs/" + pending + "/cancel"
	resumePath := "/api/v1/jobs/" + pending + "/resume"
	do(u, oaCall{name: "resume, running", method: "POST", path: resumePath, key: acme, status: 409, code: "job_not_resumable"})
	do(runAPI.URL, oaCall{name: "resume, completed", method: "POST", path: "/api/v1/jobs/" + done + "/resume", key: acme, status: 409, code: "job_not_resumable"})
	do(u, oaCall{name: "cancel, another tenant's", method: "POST", path: cancelPath, key: globex, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "cancel", method: "POST", path: cancelPath, key: acme, status: 202})
	do(u, oaCall{name: "cancel, cancelled", method: "POST", path: cancelPath, key: acme, status: 409, code: "job_already_terminal"})
	do(u, oaCall{name: "cancel missing", method: "POST", path: "/api/v1/jobs/" + missing + "/cancel", key: acme, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "cancel, bad id", method: "POST", path: "/api/v1/jobs/nope/cancel", key: acme, status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "cancel without key", method: "POST", path: cancelPath, status: 401, code: "unauthorized", docRejects: true})
	do(u, oaCall{name: "resume, unknown step", method: "POST", path: resumePath, key: acme, body: `{"from_step": "nope"}`, status: 422, code: "step_not_found"})
	do(u, oaCall{name: "resume, invalid input", method: "POST", path: resumePath, key: acme, body: `{"input_data": {"name": 3}}`, status: 422, code: "invalid_input"})
	do(u, oaCall{name: "resume, NUL in from_step", method: "POST", path: resumePath, key: acme, body: `{"from_step": "a\u0000"}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "resume, unknown field", method: "POST", path: resumePath, key: acme, body: `{"step": "fetch"}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "resume, malformed", method: "POST", path: resumePath, key: acme, body: `[`, status: 400, code: "invalid_json", docRejects: true})
	do(u, oaCall{name: "resume, not JSON", method: "POST", path: resumePath, key: acme, header: []string{"Content-Type", "text/plain"}, body: "{}", status: 415, code: "unsupported_media_type", docRejects: true})
	do(u, oaCall{name: "resume, too large", method: "POST", path: resumePath, key: acme, body: `{"input_data": {"name": "` + strings.Repeat("x", int(api.Node.Config.MaxBodyBytes)) + `"}}`, status: 413, code: "body_too_large"})
	do(u, oaCall{name: "resume missing", method: "POST", path: "/api/v1/jobs/" + missing + "/resume", key: acme, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "resume, bad id", method: "POST", path: "/api/v1/jobs/nope/resume", key: acme, status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "resume without key", method: "POST", path: resumePath, status: 401, code: "unauthorized", docRejects: true})
	do(u, oaCall{name: "resume from a step with new input", method: "POST", path: resumePath, key: acme, body: `{"from_step": "fetch", "input_data": {"name": "again"}}`, status: 202})
	do(u, oaCall{name: "cancel again", method: "POST", path: cancelPath, key: acme, status: 202})
	do(u, oaCall{name: "resume, empty body", method: "POST", path: resumePath, key: acme, status: 202})

	// GET /api/v1/jobs/{id}/events.
	do(u, oaCall{name: "events", method: "GET", path: "/api/v1/jobs/" + pending + "/events", key: acme, status: 200})
	do(runAPI.URL, oaCall{name: "events of a finished job", method: "GET", path: "/api/v1/jobs/" + done + "/events?after_seq=2&limit=500", key: acme, status: 200})
	do(u, oaCall{name: "events, bad after_seq", method: "GET", path: "/api/v1/jobs/" + pending + "/events?after_seq=-1", key: acme, status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "events, bad limit", method: "GET", path: "/api/v1/jobs/" + pending + "/events?limit=10001", key: acme, status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "events, bad id", method: "GET", path: "/api/v1/jobs/nope/events", key: acme, status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "events missing", method: "GET", path: "/api/v1/jobs/" + missing + "/events", key: acme, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "events without key", method: "GET", path: "/api/v1/jobs/" + pending + "/events", status: 401, code: "unauthorized", docRejects: true})

	// GET /api/v1/features.
	do(u, oaCall{name: "features", method: "GET", path: "/api/v1/features", key: acme, status: 200})
	do(u, oaCall{name: "features without key", method: "GET", path: "/api/v1/features", status: 401, code: "unauthorized", docRejects: true})

	// POST /api/v1/ws-tickets and GET /ws/{id}.
	ticketBody := `{"job_id": "` + pending + `"}`
	h, b = do(u, oaCall{name: "ticket", method: "POST", path: "/api/v1/ws-tickets", key: acme, body: ticketBody, status: 201})
	require.Equal(t, "no-store", h.Get("Cache-Control"))
	var ticket struct{ Ticket string }
	require.NoError(t, json.Unmarshal(b, &ticket))
	do(u, oaCall{name: "ticket, another tenant's job", method: "POST", path: "/api/v1/ws-tickets", key: globex, body: ticketBody, status: 404, code: "job_not_found"})
	do(u, oaCall{name: "ticket, bad job id", method: "POST", path: "/api/v1/ws-tickets", key: acme, body: `{"job_id": "nope"}`, status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "ticket, no job id", method: "POST", path: "/api/v1/ws-tickets", key: acme, body: `{}`, status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "ticket, unknown field", method: "POST", path: "/api/v1/ws-tickets", key: acme, body: `{"job": 1}`, status: 400, code: "invalid_request", docRejects: true})
	do(u, oaCall{name: "ticket, malformed", method: "POST", path: "/api/v1/ws-tickets", key: acme, body: `{`, status: 400, code: "invalid_json", docRejects: true})
	do(u, oaCall{name: "ticket, not JSON", method: "POST", path: "/api/v1/ws-tickets", key: acme, header: []string{"Content-Type", "text/plain"}, body: ticketBody, status: 415, code: "unsupported_media_type", docRejects: true})
	do(u, oaCall{name: "ticket, too large", method: "POST", path: "/api/v1/ws-tickets", key: acme, body: `{"job_id": "` + strings.Repeat("x", int(api.Node.Config.MaxBodyBytes)) + `"}`, status: 413, code: "body_too_large", docRejects: true})
	do(u, oaCall{name: "ticket without key", method: "POST", path: "/api/v1/ws-tickets", body: ticketBody, status: 401, code: "unauthorized", docRejects: true})

	ws := "/ws/" + pending
	do(u, oaCall{name: "ws with a ticket", method: "GET", path: ws + "?ticket=" + url.QueryEscape(ticket.Ticket), header: wsUpgrade(), status: 101})
	do(u, oaCall{name: "ws, ticket used", method: "GET", path: ws + "?ticket=" + url.QueryEscape(ticket.Ticket), header: wsUpgrade(), status: 401, code: "unauthorized"})
	do(u, oaCall{name: "ws with a key", method: "GET", path: ws, key: acme, header: wsUpgrade(), status: 101})
	do(u, oaCall{name: "ws with X-API-Key", method: "GET", path: ws + "?after_seq=0", header: append(wsUpgrade(), "X-API-Key", acme), status: 101})
	do(u, oaCall{name: "ws with a key in the query", method: "GET", path: ws + "?api_key=" + acme, header: wsUpgrade(), status: 101})
	do(runAPI.URL, oaCall{name: "ws of a finished job", method: "GET", path: "/ws/" + done + "?after_seq=1", key: acme, header: wsUpgrade(), status: 101})
	do(u, oaCall{name: "ws without key", method: "GET", path: ws, header: wsUpgrade(), status: 401, code: "unauthorized", docRejects: true})
	do(u, oaCall{name: "ws, another tenant's job", method: "GET", path: ws, key: globex, header: wsUpgrade(), status: 404, code: "job_not_found"})
	do(u, oaCall{name: "ws missing", method: "GET", path: "/ws/" + missing, key: acme, header: wsUpgrade(), status: 404, code: "job_not_found"})
	do(u, oaCall{name: "ws, bad id", method: "GET", path: "/ws/nope", key: acme, header: wsUpgrade(), status: 400, code: "invalid_job_id", docRejects: true})
	do(u, oaCall{name: "ws, bad after_seq", method: "GET", path: ws + "?after_seq=x", key: acme, header: wsUpgrade(), status: 400, code: "invalid_query", docRejects: true})
	do(u, oaCall{name: "ws, foreign origin", method: "GET", path: ws, key: acme, header: append(wsUpgrade(), "Origin", "https://evil.example"), status: 403, code: "origin_not_allowed"})
	do(u, oaCall{name: "ws, old protocol version", method: "GET", path: ws, key: acme, header: append(wsUpgrade(), "Sec-WebSocket-Version", "8"), status: 400, code: "bad_request", docRejects: true})
	h, _ = do(u, oaCall{name: "ws, no upgrade", method: "GET", path: ws, key: acme, status: 426, code: "upgrade_required", docRejects: true})
	require.Equal(t, "websocket", h.Get("Upgrade"))

	// Budgets: a replica whose tenants may send one request per minute and hold one WebSocket.
	d := nodeDeps(api.Node)
	d.Settings.RateLimit = registry.RateLimit{Requests: 1, Per: time.Minute}
	d.Settings.WSMaxPerTenant = 1
	_, limited := serveDeps(t, d)
	do(limited, oaCall{name: "within the budget", method: "GET", path: "/api/v1/features", key: acme, status: 200})
	authed := []oaCall{
		{method: "POST", path: "/api/v1/jobs", body: create},
		{method: "GET", path: "/api/v1/jobs"},
		{method: "GET", path: "/api/v1/jobs/" + pending},
		{method: "POST", path: resumePath},
		{method: "POST", path: cancelPath},
		{method: "GET", path: "/api/v1/jobs/" + pending + "/events"},
		{method: "GET", path: "/api/v1/features"},
		{method: "POST", path: "/api/v1/ws-tickets", body: ticketBody},
	}
	for _, c := range authed {
		c.name, c.key, c.status, c.code = "over the budget: "+c.method+" "+c.path, acme, 429, "rate_limited"
		h, _ := do(limited, c)
		require.NotEmpty(t, h.Get("Retry-After"))
	}
	do(limited, oaCall{name: "first ws", method: "GET", path: ws, key: acme, header: wsUpgrade(), status: 101, hold: true})
	h, _ = do(limited, oaCall{name: "ws over the cap", method: "GET", path: ws, key: acme, header: wsUpgrade(), status: 429, code: "rate_limited"})
	require.NotEmpty(t, h.Get("Retry-After"))

	// Backends down, and a bug: the core fails every call.
	keyring := auth.NewKeyring(auth.Key{Tenant: "acme", Secret: acme})
	failing := func(err error, hl Health) (*Server, string) {
		return serveDeps(t, Deps{
			Jobs: failingJobs{err: err}, Events: api.Node.Hub, Health: hl, Metrics: metrics.New(func() float64 { return 0 }),
			Registry: env.Registry, Tokens: auth.NewTokens(api.Node.Redis, keyring, ""), Logger: testLogger(),
			Settings: Settings{Keys: keyring, MaxBodyBytes: 1 << 20},
		})
	}
	_, down := failing(store.ErrUnavailable, downHealth{})
	bugSrv, bug := failing(errors.New("a bug"), fakeHealth{})
	for _, c := range append(authed, oaCall{method: "GET", path: ws, header: wsUpgrade()}) {
		if c.path == "/api/v1/features" {
			continue // asks nothing of the core
		}
		c.key = acme
		c.name, c.status, c.code = "down: "+c.method+" "+c.path, 503, "service_unavailable"
		h, _ := do(down, c)
		require.NotEmpty(t, h.Get("Retry-After"))
		c.name, c.status, c.code = "bug: "+c.method+" "+c.path, 500, "internal_error"
		do(bug, c)
	}
	for _, p := range []string{"/health/services", "/api/v1/health/services"} {
		h, b := do(down, oaCall{name: "services down " + p, method: "GET", path: p, status: 503})
		require.JSONEq(t, `{"status": "down"}`, string(b))
		require.NotEmpty(t, h.Get("Retry-After"))
		do(down, oaCall{name: "services down with key " + p, method: "GET", path: p, key: acme, status: 503})
	}
	// A WebSocket asked of a server that is shutting down.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, bugSrv.Stop(sctx))
	h, _ = do(bug, oaCall{name: "ws while stopping", method: "GET", path: ws, key: acme, header: wsUpgrade(), status: 503, code: "service_unavailable"})
	require.NotEmpty(t, h.Get("Retry-After"))

	oc.requireEveryStatusSeen(t)
}

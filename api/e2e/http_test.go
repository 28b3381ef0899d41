package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// scripted is a test HTTP service: each path answers from a per-key script of statuses, and every
// call is recorded.
type scripted struct {
	mu    sync.Mutex
	calls []call
	seen  map[string]int // calls per path+key
}

type call struct {
	Path, Key, Auth string
	Body            map[string]any
	At              time.Time
}

const secret = "sk-live-ThisIsASecretTokenValue123"

func newScripted(t *testing.T) (*scripted, *httptest.Server) {
	s := &scripted{seen: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(srv.Close)
	return s, srv
}

func (s *scripted) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	key := r.Header.Get("Idempotency-Key")
	s.mu.Lock()
	s.calls = append(s.calls, call{Path: r.URL.Path, Key: key, Auth: r.Header.Get("Authorization"), Body: body, At: time.Now()})
	s.seen[r.URL.Path+"|"+key]++
	n := s.seen[r.URL.Path+"|"+key]
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/echo":
		_ = json.NewEncoder(w).Encode(map[string]any{"echo": body, "n": len(s.calls)})
	case "/ratelimited": // 429 with Retry-After: 1, then 200
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"error":"slow down"}`))
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	case "/flaky": // 500, 500, then 200
		if n <= 2 {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"error":"boom"}`))
			return
		}
		_, _ = w.Write([]byte(`{"ok":"third time"}`))
	case "/bad": // 400 echoing the Authorization header: must not leak
		w.WriteHeader(http.StatusBadRequest)
		_, _ = fmt.Fprintf(w, `{"error":"invalid key %s"}`, r.Header.Get("Authorization"))
	case "/huge":
		_, _ = w.Write([]byte(`{"data":"` + strings.Repeat("x", 4096) + `"}`))
	case "/text":
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("plain text answer"))
	case "/unstorable/nul": // answers that no database can store
		_, _ = w.Write([]byte(`{"text":"a\u0000b"}`))
	case "/unstorable/number":
		_, _ = w.Write([]byte(`{"n":1e999999}`))
	case "/unstorable/utf8":
		_, _ = w.Write([]byte("{\"s\":\"\xff\xfe\"}"))
	case "/unstorable/deep":
		_, _ = w.Write([]byte(strings.Repeat("[", 10001) + strings.Repeat("]", 10001)))
	default:
		http.NotFound(w, r)
	}
}

func (s *scripted) byPath(path string) []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []call
	for _, c := range s.calls {
		if c.Path == path {
			out = append(out, c)
		}
	}
	return out
}

func httpRegistry(baseURL string) string {
	return fmt.Sprintf(`
services:
  api:
    kind: http
    base_url: %s
    headers: {Authorization: "Bearer ${TEST_SECRET}"}
    timeout: 2s
    max_response_bytes: 2048
    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 300ms}
features:
  pipeline:
    input:
      type: object
      required: [name]
      properties: {name: {type: string}}
    steps:
      - name: research
        service: api
        request: {path: /echo, body: {topic: "{{ .input.name }}", tags: "{{ .input.tags }}"}}
      - name: left
        service: api
        needs: [research]
        request: {path: /echo, body: {from: "{{ .steps.research.output.echo.topic }}", side: left}}
      - name: right
        service: api
        needs: [research]
        request: {path: /echo, body: {from: "{{ .steps.research.output.echo.topic }}", side: right}}
      - name: merge
        service: api
        needs: [left, right]
        request:
          path: /echo
          body: {parts: ["{{ .steps.left.output.echo.side }}", "{{ .steps.right.output.echo.side }}"], job: "{{ .job.id }}"}
  ratelimited:
    steps: [{name: call, service: api, request: {path: /ratelimited}}]
  flaky:
    steps: [{name: call, service: api, request: {path: /flaky}}]
  bad:
    steps:
      - {name: call, service: api, request: {path: /bad}}
      - {name: after, service: api, needs: [call], request: {path: /echo}}
  huge:
    steps: [{name: call, service: api, request: {path: /huge}}]
  text:
    steps: [{name: call, service: api, request: {path: /text}}]
  unstorable:
    input: {type: object, required: [kind], properties: {kind: {type: string}}}
    steps: [{name: call, service: api, request: {path: "/unstorable/{{ .input.kind }}"}}]
`, baseURL)
}

func TestHTTPStepsRetriesAndSecrets(t *testing.T) {
	t.Parallel()
	svc, srv := newScripted(t)
	c := newCluster(t, httpRegistry(srv.URL), "TEST_SECRET="+secret, "CAO_LOG_LEVEL=debug")
	api := c.startAPI()
	worker := c.startWorker()
	cl := c.client(api)

	t.Run("fan-out and fan-in pass outputs, with awkward input", func(t *testing.T) {
		name := "Ünïcødé \"quoted\"\nline two 🚀 東京"
		id := cl.createJob("pipeline", map[string]any{"name": name, "tags": []any{"a", 1.5, true}})
		j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "COMPLETED", j["status"], "%v", j)
		calls := svc.byPath("/echo")
		got := map[string]call{}
		for _, cl := range calls {
			if strings.HasPrefix(cl.Key, id+"/") {
				got[strings.Split(cl.Key, "/")[1]] = cl
			}
		}
		require.Equal(t, name, got["research"].Body["topic"], "input arrives intact")
		require.Equal(t, []any{"a", 1.5, true}, got["research"].Body["tags"], "a single expression keeps its JSON type")
		require.Equal(t, name, got["left"].Body["from"])
		require.Equal(t, []any{"left", "right"}, got["merge"].Body["parts"])
		require.Equal(t, id, got["merge"].Body["job"])
		require.Equal(t, id+"/merge/1", got["merge"].Key)
		require.Equal(t, "Bearer "+secret, got["merge"].Auth, "the secret reaches the service")
	})

	t.Run("429 with Retry-After then 200", func(t *testing.T) {
		id := cl.createJob("ratelimited", map[string]any{})
		j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "COMPLETED", j["status"])
		var mine []call
		for _, cl := range svc.byPath("/ratelimited") {
			if strings.HasPrefix(cl.Key, id+"/") {
				mine = append(mine, cl)
			}
		}
		require.Len(t, mine, 2)
		require.Equal(t, mine[0].Key, mine[1].Key, "the same Idempotency-Key across retries")
		require.GreaterOrEqual(t, mine[1].At.Sub(mine[0].At), 900*time.Millisecond, "Retry-After honoured")
		st := steps(j)["call"]
		require.EqualValues(t, 2, st["attempts"])
		hist := st["attempt_history"].([]any)
		require.EqualValues(t, 429, hist[0].(map[string]any)["http_status"])
	})

	t.Run("an answer that cannot be stored fails the step at once, with one call", func(t *testing.T) {
		for _, kind := range []string{"nul", "number", "utf8", "deep"} {
			id := cl.createJob("unstorable", map[string]any{"kind": kind})
			j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
			require.Equal(t, "FAILED", j["status"], "%s: %v", kind, j)
			st := steps(j)["call"]
			want := "invalid_response"
			if kind == "deep" {
				want = "response_too_large" // this registry caps answers at 4 KiB, which catches it first
			}
			require.Equal(t, want, st["error_class"], "%s: %v", kind, st)
			require.EqualValues(t, 1, st["attempts"], kind)
			n := 0
			for _, c := range svc.byPath("/unstorable/" + kind) {
				if strings.HasPrefix(c.Key, id+"/") {
					n++
				}
			}
			require.Equal(t, 1, n, "%s: one call, not re-sent as if a worker had died", kind)
		}
	})

	t.Run("500, 500, 200", func(t *testing.T) {
		id := cl.createJob("flaky", map[string]any{})
		j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "COMPLETED", j["status"])
		st := steps(j)["call"]
		require.EqualValues(t, 3, st["attempts"])
		require.JSONEq(t, `{"ok":"third time"}`, mustJSON(t, st["output"]))
	})

	t.Run("400 fails at once, downstream skipped, secret never shown", func(t *testing.T) {
		id := cl.createJob("bad", map[string]any{})
		j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "FAILED", j["status"])
		st := steps(j)
		require.EqualValues(t, 1, st["call"]["attempts"], "no retry on 400")
		require.Equal(t, "SKIPPED", st["after"]["status"])
		code, body := cl.do("GET", "/api/v1/jobs/"+id, nil)
		require.Equal(t, http.StatusOK, code)
		raw := mustJSON(t, body)
		require.NotContains(t, raw, secret)
		require.Contains(t, raw, "[REDACTED]")
		require.Contains(t, raw, "400")
		code, evs := cl.do("GET", "/api/v1/jobs/"+id+"/events", nil)
		require.Equal(t, http.StatusOK, code)
		require.NotContains(t, mustJSON(t, evs), secret)
	})

	t.Run("oversized and non-JSON responses", func(t *testing.T) {
		id := cl.createJob("huge", map[string]any{})
		j := cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "FAILED", j["status"])
		st := steps(j)["call"]
		require.Equal(t, "response_too_large", st["error_class"])
		require.EqualValues(t, 1, st["attempts"])

		id = cl.createJob("text", map[string]any{})
		j = cl.waitJob(id, 30*time.Second, "COMPLETED", "FAILED")
		require.Equal(t, "COMPLETED", j["status"])
		require.Equal(t, "plain text answer", steps(j)["call"]["output"])
	})

	t.Run("concurrent POSTs with one Idempotency-Key create one job", func(t *testing.T) {
		body := map[string]any{"feature_name": "pipeline", "input_data": map[string]any{"name": "idem"}}
		var mu sync.Mutex
		ids := map[string]int{}
		conflicts := 0
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				code, resp := cl.do("POST", "/api/v1/jobs", body, "Idempotency-Key", "order-42")
				mu.Lock()
				defer mu.Unlock()
				switch code {
				case http.StatusAccepted:
					ids[resp["job_id"].(string)]++
				case http.StatusConflict:
					conflicts++
					require.Equal(t, "idempotency_key_in_flight", resp["error"].(map[string]any)["code"])
				default:
					t.Errorf("unexpected %d %v", code, resp)
				}
			})
		}
		wg.Wait()
		require.Len(t, ids, 1, "exactly one job (409s: %d)", conflicts)
		code, resp := cl.do("POST", "/api/v1/jobs", map[string]any{"feature_name": "pipeline", "input_data": map[string]any{"name": "other"}}, "Idempotency-Key", "order-42")
		require.Equal(t, http.StatusUnprocessableEntity, code)
		require.Equal(t, "idempotency_key_reused", resp["error"].(map[string]any)["code"])
	})

	// No secret in any log line.
	for _, p := range []*proc{api, worker} {
		b, err := os.ReadFile(p.log)
		require.NoError(t, err)
		require.NotContains(t, string(b), secret, "%s log leaks the secret", p.name)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

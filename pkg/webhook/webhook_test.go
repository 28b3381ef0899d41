package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/testinfra"
)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// verify checks a delivery as the Standard Webhooks specification says, written here from the
// specification and independently of the library that signs: the signature is base64 of
// HMAC-SHA256 over "id.timestamp.body" with the key that follows "whsec_".
func verify(t *testing.T, secret string, h http.Header, body []byte, now time.Time) {
	t.Helper()
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	require.NotEmpty(t, id)
	sec, err := strconv.ParseInt(ts, 10, 64)
	require.NoError(t, err)
	require.InDelta(t, now.Unix(), sec, 300, "timestamp within the 5-minute tolerance")
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	require.NoError(t, err)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	require.Contains(t, strings.Fields(sigs), want, "signature")
}

// receiver is a webhook endpoint that answers from a script and records every delivery.
type receiver struct {
	mu     sync.Mutex
	script []int // statuses to answer, in order; 200 once exhausted
	got    []http.Header
	bodies [][]byte
	srv    *httptest.Server
	hang   chan struct{} // when set, requests wait for it (or their context)
}

func newReceiver(t *testing.T, script ...int) *receiver {
	r := &receiver{script: script}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, req.Header.Clone())
		r.bodies = append(r.bodies, body)
		status := http.StatusOK
		if len(r.script) > 0 {
			status, r.script = r.script[0], r.script[1:]
		}
		hang := r.hang
		r.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-req.Context().Done():
			}
			return
		}
		if status >= 300 && status < 400 {
			w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"note":"status ` + strconv.Itoa(status) + `"}`))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// setup returns a migrated SQLite store (the embedded mode's real backend) holding one FAILED job
// with a webhook to url, whose delivery is due at clk's time.
func setup(t *testing.T, url string, clk *clock) (store.Store, store.WebhookDelivery) {
	t.Helper()
	ctx := testinfra.Context(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cao.db")
	require.NoError(t, migrate.Up(ctx, migrate.SQLite, path))
	st, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })

	now := clk.Now()
	job := &store.Job{ID: uuid.NewString(), Tenant: "acme", FeatureName: "f", Status: store.JobPending,
		Input: json.RawMessage(`{}`), WebhookURL: url, CreatedAt: now, UpdatedAt: now}
	require.NoError(t, st.Apply(ctx, &store.Change{Job: job, Create: true}))
	end := *job
	end.Status, end.Error, end.FinishedAt = store.JobFailed, "step a failed", &now
	d, ok, err := For(&end, now)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, st.Apply(ctx, &store.Change{Job: &end, Version: job.Version, Webhooks: []store.WebhookDelivery{d}}))
	return st, d
}

func newTestDeliverer(t *testing.T, st store.Store, clk *clock, timeout time.Duration) *Deliverer {
	t.Helper()
	d, err := NewDeliverer(st, Config{Secret: testSecret, Now: clk.Now, Timeout: timeout})
	require.NoError(t, err)
	return d
}

func deliveries(t *testing.T, st store.Store, jobID string) store.WebhookDelivery {
	t.Helper()
	ds, err := st.ListWebhookDeliveries(context.Background(), jobID)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	return ds[0]
}

// A receiver that fails twice and then succeeds gets three signed attempts with one webhook-id, on
// the schedule; the delivery is then recorded as delivered and never sent again.
func TestDeliveryRetriesUntilDelivered(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	rcv := newReceiver(t, 500, 503)
	st, want := setup(t, rcv.srv.URL+"/hooks?x=1", clk)
	d := newTestDeliverer(t, st, clk, 5*time.Second)

	sent := []time.Time{clk.Now()}
	require.Equal(t, 1, d.Poll(ctx))
	got := deliveries(t, st, want.JobID)
	require.Equal(t, 500, got.LastStatus)
	require.Contains(t, got.LastError, "receiver answered 500")
	require.Equal(t, clk.Now().Add(DefaultSchedule[0]), got.NextAttemptAt)

	require.Zero(t, d.Poll(ctx), "not due before its backoff")
	clk.Add(DefaultSchedule[0])
	sent = append(sent, clk.Now())
	require.Equal(t, 1, d.Poll(ctx))
	clk.Add(DefaultSchedule[1])
	sent = append(sent, clk.Now())
	require.Equal(t, 1, d.Poll(ctx))
	got = deliveries(t, st, want.JobID)
	require.Equal(t, 200, got.LastStatus)
	require.NotNil(t, got.DeliveredAt)
	require.Equal(t, 3, got.Attempts)
	clk.Add(24 * time.Hour)
	require.Zero(t, d.Poll(ctx), "a delivered webhook is not sent again")

	require.Equal(t, 3, rcv.calls())
	for i, h := range rcv.got {
		require.Equal(t, want.ID, h.Get("webhook-id"), "the same webhook-id on every attempt")
		require.Equal(t, "application/json", h.Get("Content-Type"))
		verify(t, testSecret, h, rcv.bodies[i], sent[i])
		var body struct {
			Type      string         `json:"type"`
			Timestamp string         `json:"timestamp"`
			Data      map[string]any `json:"data"`
		}
		require.NoError(t, json.Unmarshal(rcv.bodies[i], &body))
		require.Equal(t, "job.failed", body.Type)
		require.Equal(t, want.JobID, body.Data["id"])
		require.Equal(t, "acme", body.Data["tenant"])
		require.Equal(t, "FAILED", body.Data["status"])
		require.Equal(t, "step a failed", body.Data["error"])
		require.NotContains(t, body.Data, "steps", "the job object without steps")
		_, err := time.Parse(time.RFC3339Nano, body.Timestamp)
		require.NoError(t, err)
	}
}

// A receiver that never answers costs one attempt per timeout; a redirect is not followed; after the
// last scheduled retry (more than 24 hours) the delivery is given up.
func TestDeliveryTimeoutRedirectAndGiveUp(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	rcv := newReceiver(t, 0, 302)
	rcv.hang = make(chan struct{})
	st, want := setup(t, rcv.srv.URL, clk)
	d := newTestDeliverer(t, st, clk, 300*time.Millisecond)

	require.Equal(t, 1, d.Poll(ctx))
	got := deliveries(t, st, want.JobID)
	require.Zero(t, got.LastStatus)
	require.Contains(t, got.LastError, "no answer within")
	close(rcv.hang)
	rcv.mu.Lock()
	rcv.hang = nil
	rcv.mu.Unlock()

	clk.Add(DefaultSchedule[0])
	require.Equal(t, 1, d.Poll(ctx))
	got = deliveries(t, st, want.JobID)
	require.Equal(t, http.StatusFound, got.LastStatus, "a redirect is an answer, not followed")
	require.Nil(t, got.DeliveredAt)

	rcv.mu.Lock()
	rcv.script = []int{500, 500, 500, 500, 500, 500}
	rcv.mu.Unlock()
	var total time.Duration
	for _, wait := range DefaultSchedule[1:] {
		clk.Add(wait)
		total += wait
		require.Equal(t, 1, d.Poll(ctx))
	}
	got = deliveries(t, st, want.JobID)
	require.Equal(t, len(DefaultSchedule)+1, got.Attempts)
	require.NotNil(t, got.GaveUpAt)
	require.Greater(t, total+DefaultSchedule[0], 24*time.Hour, "retried for more than 24 hours")
	clk.Add(48 * time.Hour)
	require.Zero(t, d.Poll(ctx), "a given-up delivery is not sent again")
	require.Equal(t, len(DefaultSchedule)+1, rcv.calls())
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	p, err := NewPolicy("hooks.example.com, 127.0.0.1:9000,[::1]:8443")
	require.NoError(t, err)
	for raw, want := range map[string]string{
		"https://hooks.example.com/a?b=1#frag": "https://hooks.example.com/a?b=1",
		"http://HOOKS.example.com:8080/x":      "http://HOOKS.example.com:8080/x",
		"http://127.0.0.1:9000/cao":            "http://127.0.0.1:9000/cao",
		"https://[::1]:8443/":                  "https://[::1]:8443/",
	} {
		got, err := p.Check(raw)
		require.NoError(t, err, raw)
		require.Equal(t, want, got)
	}
	for _, bad := range []string{
		"http://127.0.0.1:9001/", "http://127.0.0.1/", "https://evil.example/", "ftp://hooks.example.com/",
		"hooks.example.com/x", "http://user:pw@hooks.example.com/", "/relative", "http://hooks.example.com.evil.example/",
	} {
		_, err := p.Check(bad)
		require.ErrorIs(t, err, ErrNotAllowed, bad)
	}
	_, err = Policy{}.Check("https://hooks.example.com/")
	require.ErrorIs(t, err, ErrNotAllowed, "no allow-list: webhooks refused")
	for _, bad := range []string{"a/b", "user@host", "*.example.com", ":80", "host:"} {
		_, err := NewPolicy(bad)
		require.Error(t, err, bad)
	}
	require.NoError(t, ParseSecret(testSecret))
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_%%%", "whsec_c2hvcnQ="} {
		require.Error(t, ParseSecret(bad), bad)
	}
}

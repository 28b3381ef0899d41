package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	caoclient "github.com/cao-run/cao/pkg/client"
)

const webhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// hookReceiver records deliveries and answers from a script of statuses (200 once it is empty).
type hookReceiver struct {
	mu      sync.Mutex
	script  []int
	headers []http.Header
	bodies  [][]byte
	srv     *httptest.Server
}

func newHookReceiver(t *testing.T, script ...int) *hookReceiver {
	r := &hookReceiver{script: script}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.headers = append(r.headers, req.Header.Clone())
		r.bodies = append(r.bodies, body)
		status := http.StatusOK
		if len(r.script) > 0 {
			status, r.script = r.script[0], r.script[1:]
		}
		r.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *hookReceiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.headers)
}

// verifyWebhook checks one delivery as the Standard Webhooks specification says, independently of
// the library that signed it.
func verifyWebhook(t *testing.T, h http.Header, body []byte) {
	t.Helper()
	id, ts := h.Get("webhook-id"), h.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	require.NoError(t, err)
	require.InDelta(t, time.Now().Unix(), sec, 300)
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(webhookSecret, "whsec_"))
	require.NoError(t, err)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	require.Contains(t, strings.Fields(h.Get("webhook-signature")), "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
}

// A job with a webhook_url gets its completion POST, signed, at least once: the receiver fails the
// first attempt, the worker is killed (-9) before the retry, and a new worker delivers it with the same
// webhook-id. A host outside the allow-list is refused at POST time.
func TestWebhookSurvivesWorkerKill(t *testing.T) {
	t.Parallel()
	rcv := newHookReceiver(t, http.StatusInternalServerError)
	u, err := url.Parse(rcv.srv.URL)
	require.NoError(t, err)
	c := newCluster(t, dagRegistry, "CAO_WEBHOOK_SECRET="+webhookSecret, "CAO_WEBHOOK_ALLOWED_HOSTS="+u.Host)
	api := c.startAPI()
	cl := c.client(api)

	code, body := cl.do("POST", "/api/v1/jobs", map[string]any{
		"feature_name": "report", "input_data": map[string]any{"topic": "x"}, "webhook_url": "http://evil.example/hook",
	})
	require.Equal(t, http.StatusUnprocessableEntity, code, "%v", body)
	require.Equal(t, "webhook_not_allowed", errCode(body))

	acc, err := cl.sdk().Start(context.Background(), caoclient.StartRequest{
		Feature: "report", Input: map[string]any{"topic": "x"}, WebhookURL: rcv.srv.URL + "/hooks/cao",
	})
	require.NoError(t, err)
	id := acc.JobID
	require.Contains(t, acc.UIURL, "/ui/jobs/"+id)

	w1 := c.startWorker()
	cl.waitJob(id, 60*time.Second, "COMPLETED")
	require.True(t, pollUntil(30*time.Second, func() bool { return rcv.count() == 1 }), "first attempt")
	// The failed attempt is recorded before the worker dies.
	require.True(t, pollUntil(30*time.Second, func() bool {
		wh, _ := cl.job(id)["webhook"].(map[string]any)
		return wh != nil && wh["last_status"] == float64(500)
	}), "the failed attempt is visible on the job")
	w1.signal(t, syscall.SIGKILL)

	c.startWorker()
	require.True(t, pollUntil(60*time.Second, func() bool {
		wh, _ := cl.job(id)["webhook"].(map[string]any)
		return wh != nil && wh["delivered_at"] != nil
	}), "delivered after the retry by another worker")
	wh := cl.job(id)["webhook"].(map[string]any)
	require.EqualValues(t, 2, wh["attempts"])
	require.EqualValues(t, 200, wh["last_status"])
	require.Equal(t, "job.completed", wh["type"])

	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	require.Len(t, rcv.headers, 2)
	require.Equal(t, rcv.headers[0].Get("webhook-id"), rcv.headers[1].Get("webhook-id"), "one webhook-id for every attempt")
	for i, h := range rcv.headers {
		verifyWebhook(t, h, rcv.bodies[i])
		var payload struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}
		require.NoError(t, json.Unmarshal(rcv.bodies[i], &payload))
		require.Equal(t, "job.completed", payload.Type)
		require.Equal(t, id, payload.Data["id"])
		require.Equal(t, "COMPLETED", payload.Data["status"])
		require.NotNil(t, payload.Data["output"])
	}
}

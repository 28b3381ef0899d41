package devmode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// limitsKey is the API key of the HTTP limits test's process.
const limitsKey = "limits-test-key"

// limitsReadTimeout is its CAO_HTTP_READ_TIMEOUT: shorter than the slow step of the test registry.
const limitsReadTimeout = 500 * time.Millisecond

// rawConn opens a TCP connection to the dev process, closed at cleanup, with a deadline that fails the
// test rather than hanging it.
func rawConn(t *testing.T, base string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	return c
}

// trickleBody writes one byte every interval until the connection fails or the test ends.
func trickleBody(t *testing.T, c net.Conn, interval time.Duration) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
}

// untilClosed reads until the server ends the connection; a read timeout (the server kept it open)
// fails the test.
func untilClosed(t *testing.T, r io.Reader) []byte {
	t.Helper()
	out, err := io.ReadAll(r)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server kept the connection open: %v", err)
	return out
}

// envelopeOf decodes an error answer and checks it is the envelope with code.
func envelopeOf(t *testing.T, resp *http.Response, status int, code string) string {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s", body)
	require.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	var env struct {
		Success *bool `json:"success"`
		Error   struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(body, &env), "%s", body)
	require.NotNil(t, env.Success)
	require.False(t, *env.Success)
	require.Equal(t, code, env.Error.Code, "%s", body)
	return env.Error.Message
}

// authed sends a request with the test's key.
func authed(t *testing.T, method, url string, body any) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	req.Header.Set("X-API-Key", limitsKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// TestHTTPLimits runs `cao-api dev` with keys and a short CAO_HTTP_READ_TIMEOUT and checks, over raw
// connections, that slow requests cannot hold a connection, that every error net/http or asynqmon
// answers is the envelope, and that a WebSocket outlives the read timeout.
func TestHTTPLimits(t *testing.T) {
	t.Parallel()
	p := startDev(t, t.TempDir(), []string{"--registry", filepath.Join("api", "internal", "devmode", "testdata", "registry.yaml")},
		"CAO_API_KEYS="+limitsKey, "CAO_HTTP_READ_TIMEOUT="+limitsReadTimeout.String())

	t.Run("unauthenticated slow body", func(t *testing.T) {
		t.Parallel()
		c := rawConn(t, p.base)
		start := time.Now()
		_, err := io.WriteString(c, "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		require.NoError(t, err)
		trickleBody(t, c, 100*time.Millisecond)
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		require.NoError(t, err)
		envelopeOf(t, resp, http.StatusUnauthorized, "unauthorized")
		require.True(t, resp.Close, "Connection: close")
		require.Empty(t, untilClosed(t, r))
		require.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("authenticated slow body", func(t *testing.T) {
		t.Parallel()
		c := rawConn(t, p.base)
		start := time.Now()
		_, err := io.WriteString(c, "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: "+limitsKey+
			"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"feature_name\":\"slow_chain\",")
		require.NoError(t, err)
		trickleBody(t, c, 100*time.Millisecond)
		out := untilClosed(t, c)
		require.NotContains(t, string(out), "202 Accepted")
		require.GreaterOrEqual(t, time.Since(start), limitsReadTimeout-100*time.Millisecond)
		require.Less(t, time.Since(start), 10*time.Second)
	})

	t.Run("slow headers", func(t *testing.T) {
		t.Parallel()
		c := rawConn(t, p.base)
		start := time.Now()
		_, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		require.NoError(t, err)
		trickleBody(t, c, 100*time.Millisecond)
		require.Empty(t, untilClosed(t, c))
		require.Less(t, time.Since(start), 10*time.Second)
	})

	t.Run("net/http errors are envelopes", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			raw    string
			status int
			code   string
		}{
			{"GET /health HTTP/2.5\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported, "http_version_not_supported"},
			{"NOT A REQUEST\r\n\r\n", http.StatusBadRequest, "bad_request"},
			{"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", http.StatusBadRequest, "bad_request"},
			{"GET /health HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Big: "+strings.Repeat("b", 1000)+"\r\n", 1100) + "\r\n",
				http.StatusRequestHeaderFieldsTooLarge, "headers_too_large"},
		} {
			c := rawConn(t, p.base)
			// A good request first: the canned answer comes on a kept-alive connection.
			_, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			r := bufio.NewReader(c)
			resp, err := http.ReadResponse(r, nil)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			go func() { _, _ = io.WriteString(c, tc.raw) }()
			resp, err = http.ReadResponse(r, nil)
			require.NoError(t, err)
			envelopeOf(t, resp, tc.status, tc.code)
			require.True(t, resp.Close)
		}
	})

	t.Run("asynqmon errors are envelopes", func(t *testing.T) {
		t.Parallel()
		resp := authed(t, http.MethodGet, p.base+"/monitoring/api/queues/nosuchqueue", nil)
		require.Equal(t, "queue monitor error", envelopeOf(t, resp, http.StatusInternalServerError, "internal_error"))
		// A successful answer is asynqmon's own (JSON without a JSON Content-Type).
		resp = authed(t, http.MethodGet, p.base+"/monitoring/api/queues", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var queues struct {
			Queues []any `json:"queues"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&queues))
	})

	t.Run("WebSocket outlives the read timeout", func(t *testing.T) {
		t.Parallel()
		resp := authed(t, http.MethodPost, p.base+"/api/v1/jobs", map[string]any{"feature_name": "slow_chain", "input_data": map[string]any{"name": "x"}})
		var created struct {
			JobID string `json:"job_id"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&created))
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		rep := followWS(ctx, "ws://"+strings.TrimPrefix(p.base, "http://")+"/ws/"+created.JobID+"?api_key="+limitsKey)
		require.True(t, rep.available)
		require.NoError(t, rep.err, "messages %v", rep.types)
		require.Equal(t, websocket.StatusNormalClosure, rep.closeCode)
		require.Equal(t, "COMPLETED", rep.last)
		require.Greater(t, time.Since(start), 2*limitsReadTimeout, "the job ended before the read timeout could matter")
	})
}

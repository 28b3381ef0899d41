package serve

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fixedDate makes two servers' answers byte-comparable.
const fixedDate = "Mon, 02 Jan 2006 15:04:05 GMT"

// testHandler answers the byte-comparison requests: small, large (through io.Copy, net/http's
// ReadFrom path), streamed (chunked) and error answers, and echoes bodies.
func testHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
	mux.HandleFunc("/large", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(200_000))
		_, _ = io.Copy(w, strings.NewReader(strings.Repeat("abcdefghij", 20_000)))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, _ *http.Request) {
		for i := range 3 {
			_, _ = io.WriteString(w, "part "+strconv.Itoa(i)+"\n")
			http.NewResponseController(w).Flush()
		}
	})
	mux.HandleFunc("/plain-error", func(w http.ResponseWriter, _ *http.Request) {
		// The same headers and body as a canned answer, from a handler: never rewritten.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "400 Bad Request")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, r.Body)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", fixedDate)
		mux.ServeHTTP(w, r)
	})
}

// startServer serves h with the API's http.Server settings on 127.0.0.1, through EnvelopeListener
// when wrap is set, and returns its address.
func startServer(t *testing.T, h http.Handler, readTimeout time.Duration, wrap bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := HTTPServer(h, readTimeout, slog.New(slog.DiscardHandler))
	served := ln
	if wrap {
		served = EnvelopeListener(ln)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(served) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Close())
		require.ErrorIs(t, <-done, http.ErrServerClosed)
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	return c
}

// roundTrip sends raw on a new connection and returns everything the server wrote until it closed.
func roundTrip(t *testing.T, addr, raw string) []byte {
	t.Helper()
	c := dial(t, addr)
	_, err := io.WriteString(c, raw)
	require.NoError(t, err)
	out, err := io.ReadAll(c)
	require.NoError(t, err)
	return out
}

type envelope struct {
	Success *bool `json:"success"`
	Error   struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// requireEnvelope reads one answer from r and checks it is the envelope of status with code.
func requireEnvelope(t *testing.T, r *bufio.Reader, status int, code string) envelope {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s", body)
	require.Equal(t, strconv.Itoa(status)+" "+http.StatusText(status), resp.Status)
	require.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, strconv.Itoa(len(body)), resp.Header.Get("Content-Length"))
	require.True(t, resp.Close, "Connection: close")
	var env envelope
	require.NoError(t, json.Unmarshal(body, &env), "%s", body)
	require.NotNil(t, env.Success)
	require.False(t, *env.Success)
	require.Equal(t, code, env.Error.Code, "%s", body)
	require.NotEmpty(t, env.Error.Message)
	require.LessOrEqual(t, len(env.Error.Message), 300)
	return env
}

// requireClosed reads until the server closes the connection, which must hold nothing more.
func requireClosed(t *testing.T, r io.Reader) {
	t.Helper()
	rest, err := io.ReadAll(r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "connection reset") {
		require.NoError(t, err)
	}
	require.Empty(t, rest)
}

// The answers net/http writes by itself, before any handler, are envelopes with their status, on a
// fresh connection and after a good request on a kept-alive one.
func TestCannedErrorsAreEnvelopes(t *testing.T) {
	t.Parallel()
	addr := startServer(t, testHandler(), 10*time.Second, true)
	huge := "GET /small HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Big: "+strings.Repeat("a", 1000)+"\r\n", 1100) + "\r\n"
	for _, tc := range []struct {
		name, raw string
		status    int
		code      string
		message   string
	}{
		{"headers too large", huge, http.StatusRequestHeaderFieldsTooLarge, "headers_too_large", ""},
		{"HTTP version", "GET /small HTTP/2.5\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported, "http_version_not_supported", ""},
		{"malformed request line", "GARBAGE\r\n\r\n", http.StatusBadRequest, "bad_request", "malformed request"},
		{"missing Host", "GET /small HTTP/1.1\r\n\r\n", http.StatusBadRequest, "bad_request", "malformed request: missing required Host header"},
		{"bad header name", "GET /small HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", http.StatusBadRequest, "bad_request", ""},
		{"transfer encoding", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", http.StatusBadRequest, "bad_request", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, keepAlive := range []bool{false, true} {
				c := dial(t, addr)
				r := bufio.NewReader(c)
				if keepAlive {
					_, err := io.WriteString(c, "GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
					require.NoError(t, err)
					resp, err := http.ReadResponse(r, nil)
					require.NoError(t, err)
					body, err := io.ReadAll(resp.Body)
					require.NoError(t, err)
					require.Equal(t, http.StatusOK, resp.StatusCode)
					require.JSONEq(t, `{"status":"ok"}`, string(body))
					require.False(t, resp.Close)
				}
				// The client writes while the server may already answer (431): read concurrently.
				werr := make(chan error, 1)
				go func() { _, err := io.WriteString(c, tc.raw); werr <- err }()
				env := requireEnvelope(t, r, tc.status, tc.code)
				if tc.message != "" {
					require.Equal(t, tc.message, env.Error.Message)
				}
				requireClosed(t, r)
				if err := <-werr; err != nil {
					require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, tc.status, "write: %v", err)
				}
			}
		})
	}
}

// Without the wrapper, the same server answers plain text: the wrapper is what makes the envelope.
func TestCannedErrorsArePlainWithoutWrapper(t *testing.T) {
	t.Parallel()
	addr := startServer(t, testHandler(), 10*time.Second, false)
	out := roundTrip(t, addr, "GET /small HTTP/2.5\r\nHost: x\r\n\r\n")
	require.Equal(t, "HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version"+cannedHeaders+
		"505 HTTP Version Not Supported: unsupported protocol version", string(out))
}

// Every other answer goes through the wrapper byte for byte: small, large, streamed, HEAD, a
// handler's own plain-text 400 shaped like a canned one, an echoed body, and kept-alive sequences.
func TestEnvelopeListenerPassesAnswersThrough(t *testing.T) {
	t.Parallel()
	plain := startServer(t, testHandler(), 10*time.Second, false)
	wrapped := startServer(t, testHandler(), 10*time.Second, true)
	canned := "HTTP/1.1 400 Bad Request" + cannedHeaders + "400 Bad Request"
	for _, raw := range []string{
		"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /large HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"HEAD /large HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /plain-error HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /nowhere HTTP/1.0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(canned)) + "\r\nConnection: close\r\n\r\n" + canned,
		"GET /small HTTP/1.1\r\nHost: x\r\n\r\nGET /large HTTP/1.1\r\nHost: x\r\n\r\nGET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	} {
		want := roundTrip(t, plain, raw)
		got := roundTrip(t, wrapped, raw)
		require.NotEmpty(t, want)
		require.Equal(t, string(want), string(got), "request %q", raw)
	}
}

func TestCannedEnvelopeShape(t *testing.T) {
	t.Parallel()
	out, ok := cannedEnvelope([]byte("HTTP/1.1 431 Request Header Fields Too Large" + cannedHeaders + "431 Request Header Fields Too Large"))
	require.True(t, ok)
	body := `{"success":false,"error":{"code":"headers_too_large","message":"the request's header fields are too large"}}`
	require.Equal(t, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json; charset=utf-8\r\n"+
		"Content-Length: "+strconv.Itoa(len(body))+"\r\nConnection: close\r\n\r\n"+body, string(out))
	for _, p := range []string{
		"HTTP/1.1 400 Bad Request" + cannedHeaders + "400 Bad Request, and more",             // body differs
		"HTTP/1.1 400 Bad Request" + cannedHeaders,                                           // no body
		"HTTP/1.1 200 OK" + cannedHeaders + "200 OK",                                         // not an error
		"HTTP/1.1 400 Nonsense" + cannedHeaders + "400 Nonsense",                             // not net/http's text
		"HTTP/1.0 400 Bad Request" + cannedHeaders + "400 Bad Request",                       // not net/http's proto
		"HTTP/1.1 400 Bad Request\r\nDate: x" + cannedHeaders + "400 Bad Request\r\nDate: x", // another header
		"400 Bad Request",
		"",
	} {
		_, ok := cannedEnvelope([]byte(p))
		require.False(t, ok, "%q", p)
	}
}

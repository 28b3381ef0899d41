package serve

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// trickle writes one byte of the request body every interval until the connection fails or the test
// ends, like a client that holds a connection open with a body that never finishes.
func trickle(t *testing.T, c net.Conn, interval time.Duration) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
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
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
}

// readAllLenient reads until the server ends the connection (EOF or reset) and returns what came.
func readAllLenient(t *testing.T, r io.Reader) []byte {
	t.Helper()
	out, err := io.ReadAll(r)
	if err != nil {
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server kept the connection open: %v", err)
	}
	return out
}

// rejectWithoutReading answers 401 without looking at the body, as the API's authentication does.
func rejectWithoutReading() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"success":false,"error":{"code":"unauthorized","message":"no key"}}`)
	})
}

// An error answered before the body was read is sent at once and the connection closes soon after,
// well within the read timeout, however slowly the client sends the body.
func TestEarlyErrorClosesSlowBody(t *testing.T) {
	t.Parallel()
	addr := startServer(t, rejectWithoutReading(), 30*time.Second, true)
	c := dial(t, addr)
	start := time.Now()
	_, err := io.WriteString(c, "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	require.NoError(t, err)
	trickle(t, c, 100*time.Millisecond)
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.True(t, resp.Close, "the answer says Connection: close")
	require.Contains(t, string(body), "unauthorized")
	require.Less(t, time.Since(start), 5*time.Second, "the 401 waited for the body")
	require.Empty(t, readAllLenient(t, r))
	require.Less(t, time.Since(start), 10*time.Second, "the connection outlived the grace period")
}

// A small body the client sent whole is still read after an early error: the client gets its answer
// and a clean close, not a reset.
func TestEarlyErrorWithWholeBody(t *testing.T) {
	t.Parallel()
	addr := startServer(t, rejectWithoutReading(), 30*time.Second, true)
	body := `{"feature_name":"x"}`
	out := roundTrip(t, addr, "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)
	require.Contains(t, string(out), "HTTP/1.1 401 Unauthorized\r\n")
	require.Contains(t, string(out), "\r\nConnection: close\r\n")
}

// A handler that reads the body gets an error once CAO_HTTP_READ_TIMEOUT has passed since the
// request started, and the connection ends: a trickling body cannot hold it.
func TestReadTimeoutCutsSlowBody(t *testing.T) {
	t.Parallel()
	readErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
		if err != nil {
			http.Error(w, "slow body", http.StatusRequestTimeout)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	addr := startServer(t, h, 500*time.Millisecond, true)
	c := dial(t, addr)
	start := time.Now()
	_, err := io.WriteString(c, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	require.NoError(t, err)
	trickle(t, c, 100*time.Millisecond)
	out := readAllLenient(t, c)
	elapsed := time.Since(start)
	require.Error(t, <-readErr, "the handler read the whole trickled body")
	require.NotContains(t, string(out), "204")
	require.GreaterOrEqual(t, elapsed, 400*time.Millisecond)
	require.Less(t, elapsed, 10*time.Second)
}

// Headers must arrive within the read timeout too.
func TestReadTimeoutCutsSlowHeaders(t *testing.T) {
	t.Parallel()
	addr := startServer(t, testHandler(), 500*time.Millisecond, true)
	c := dial(t, addr)
	start := time.Now()
	_, err := io.WriteString(c, "GET /small HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	require.NoError(t, err)
	trickle(t, c, 100*time.Millisecond)
	require.Empty(t, readAllLenient(t, c))
	require.Less(t, time.Since(start), 10*time.Second)
}

// The http.Server has the read, header, write and idle timeouts from the configuration.
func TestHTTPServerTimeouts(t *testing.T) {
	t.Parallel()
	srv := HTTPServer(http.NotFoundHandler(), 7*time.Second, nil)
	require.Equal(t, 7*time.Second, srv.ReadTimeout)
	require.Equal(t, 7*time.Second, srv.ReadHeaderTimeout)
	require.Equal(t, 7*time.Second+WriteTimeout, srv.WriteTimeout)
	require.Equal(t, IdleTimeout, srv.IdleTimeout)
	srv = HTTPServer(http.NotFoundHandler(), 0, nil)
	require.Equal(t, 30*time.Second, srv.ReadTimeout)
}

// Once its request has arrived, a handler is not cut short by the read timeout (its context is not
// cancelled, its answer is sent), with or without a body: the timeout bounds the client, not the
// handler. net/http clears the read deadline when the request has been read; this keeps it so.
func TestReadTimeoutSparesSlowHandlers(t *testing.T) {
	t.Parallel()
	const readTimeout = 300 * time.Millisecond
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		work := time.NewTimer(3 * readTimeout)
		defer work.Stop()
		select {
		case <-r.Context().Done():
			http.Error(w, "cancelled", 499)
		case <-work.C:
			_, _ = w.Write(append([]byte("done "), body...))
		}
	})
	addr := startServer(t, h, readTimeout, true)
	for _, tc := range []struct{ method, body string }{{http.MethodGet, ""}, {http.MethodPost, "payload"}} {
		req, err := http.NewRequest(tc.method, "http://"+addr+"/work", strings.NewReader(tc.body))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", tc.method, got)
		require.Equal(t, "done "+tc.body, string(got))
	}
}

package httpapi

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// ClearDeadlines removes the read and write deadlines net/http put on the request's connection
// (CAO_HTTP_READ_TIMEOUT and the server's write timeout). A hijacked connection keeps them, so a
// handler that takes the connection over for good, the WebSocket monitor, calls this right before
// the upgrade: an upgraded connection is exempt from the request timeouts.
func ClearDeadlines(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
}

// UnreadBodyGrace is how long the server still reads a request body it did not use after answering
// the request with an error (see CloseAfterEarlyError).
const UnreadBodyGrace = time.Second

// CloseAfterEarlyError ends the connection of a request answered with an error (status >= 400) before
// its body was read to the end, an unauthenticated POST for instance: the answer says Connection:
// close and is sent at once, and the rest of the body is read for at most UnreadBodyGrace (never past
// readTimeout from the request's start) before the connection is closed. net/http would otherwise
// read the unused body at the client's pace, a byte every few seconds, for the whole read timeout,
// before even sending the answer. (Once a request has arrived, net/http itself clears the read
// deadline, so a slow handler is never cut short by CAO_HTTP_READ_TIMEOUT.)
func CloseAfterEarlyError(h http.Handler, readTimeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || (r.ContentLength == 0 && len(r.TransferEncoding) == 0) {
			h.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		body := &trackedBody{ReadCloser: r.Body, length: r.ContentLength}
		r.Body = body
		ew := &earlyErrorWriter{ResponseWriter: w, body: body}
		h.ServeHTTP(ew, r)
		if !ew.cut {
			return
		}
		deadline := time.Now().Add(UnreadBodyGrace)
		if readTimeout > 0 && start.Add(readTimeout).Before(deadline) {
			deadline = start.Add(readTimeout)
		}
		_ = http.NewResponseController(w).SetReadDeadline(deadline)
	})
}

// trackedBody knows whether the request body was read to its end.
type trackedBody struct {
	io.ReadCloser
	length int64 // Content-Length, -1 when unknown (chunked)
	n      int64
	eof    bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *trackedBody) complete() bool { return b.eof || (b.length >= 0 && b.n >= b.length) }

// earlyErrorWriter marks the answer Connection: close when it is an error and the body is not read
// to the end.
type earlyErrorWriter struct {
	http.ResponseWriter
	body        *trackedBody
	wroteHeader bool
	cut         bool
}

func (w *earlyErrorWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= http.StatusOK {
		w.wroteHeader = true
		if code >= http.StatusBadRequest && !w.body.complete() {
			w.Header().Set("Connection", "close")
			w.cut = true
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *earlyErrorWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Flush, Hijack and Unwrap keep what the wrapped writer can do (http.ResponseController).
func (w *earlyErrorWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *earlyErrorWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *earlyErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

package serve

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"

	"github.com/cao-run/cao/api/internal/httpapi"
)

// EnvelopeListener wraps ln so that the error answers net/http writes by itself, before any handler
// runs, are the API's JSON error envelope like every other error: 400 for a malformed request (bad
// request line, header or Host, and a transfer coding it does not implement, which net/http answers
// 501), 431 for headers over MaxHeaderBytes, 505 for an HTTP version it does not speak. net/http writes those canned answers
// straight on the connection, in one write of exactly this shape:
//
//	HTTP/1.1 <status> <text>[: <detail>]\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n<body>
//
// whose body repeats the status line (or, for 501, says "Unsupported transfer encoding"). A write of
// exactly that shape is replaced by the same status with the envelope; every other write passes
// through unchanged. An answer from a handler never has that shape: net/http writes the handler's
// headers in sorted order with a Date, and frames the body with Content-Length or chunked encoding.
func EnvelopeListener(ln net.Listener) net.Listener { return envelopeListener{ln} }

type envelopeListener struct{ net.Listener }

func (l envelopeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &envelopeConn{Conn: c}, nil
}

// envelopeConn rewrites net/http's canned error answers (see EnvelopeListener).
type envelopeConn struct{ net.Conn }

func (c *envelopeConn) Write(p []byte) (int, error) {
	if out, ok := cannedEnvelope(p); ok {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close the connection after a 431 (it then waits for the client to
// read the answer before closing), as it does on a bare TCP connection.
func (c *envelopeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom keeps net/http's sendfile/splice path for response bodies (they are never canned answers).
func (c *envelopeConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// cannedHeaders are the headers of every canned error answer of net/http (server.go, conn.serve).
const cannedHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// maxCannedAnswer bounds the size of a canned answer: its texts are net/http's own short constants.
const maxCannedAnswer = 1024

// cannedUnsupportedTE is the body of the canned 501.
const cannedUnsupportedTE = "Unsupported transfer encoding"

// cannedEnvelope returns the envelope answer replacing p when p is exactly one canned error answer.
func cannedEnvelope(p []byte) ([]byte, bool) {
	const proto = "HTTP/1.1 "
	rest, ok := bytes.CutPrefix(p, []byte(proto))
	if !ok || len(p) > maxCannedAnswer {
		return nil, false
	}
	// The canned headers follow the status line at once.
	end := bytes.IndexAny(rest, "\r\n")
	if end < 5 || rest[3] != ' ' || !bytes.HasPrefix(rest[end:], []byte(cannedHeaders)) {
		return nil, false
	}
	line, body := rest[:end], rest[end+len(cannedHeaders):]
	status, err := strconv.Atoi(string(line[:3]))
	if err != nil || status < 400 || status > 599 || http.StatusText(status) == "" {
		return nil, false
	}
	reason, detail, _ := bytes.Cut(line[4:], []byte(": "))
	switch {
	case bytes.Equal(body, line):
	case status == http.StatusNotImplemented && string(body) == cannedUnsupportedTE:
		detail = []byte(cannedUnsupportedTE)
	default:
		return nil, false
	}
	if string(reason) != http.StatusText(status) {
		return nil, false
	}
	if status == http.StatusNotImplemented {
		// A transfer coding the server does not implement is the client's input: no input is
		// answered with a 5xx (the contract), so it is a 400 like any other malformed request.
		status = http.StatusBadRequest
	}
	env := httpapi.ErrorEnvelope(httpapi.StatusErrorCode(status), cannedMessage(status, string(detail)))
	var b bytes.Buffer
	b.Grow(160 + len(env))
	b.WriteString(proto)
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(status))
	b.WriteString("\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(env)))
	b.WriteString("\r\nConnection: close\r\n\r\n")
	b.Write(env)
	return b.Bytes(), true
}

// cannedMessage is the envelope's message of a canned answer with net/http's detail, if any.
func cannedMessage(status int, detail string) string {
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		return "the request's header fields are too large"
	case http.StatusHTTPVersionNotSupported:
		return "HTTP version not supported: use HTTP/1.1"
	}
	if detail == cannedUnsupportedTE {
		return "unsupported transfer encoding: only chunked is accepted"
	}
	if detail != "" {
		return "malformed request: " + detail
	}
	if status == http.StatusBadRequest {
		return "malformed request"
	}
	return http.StatusText(status)
}

package caller

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cao-run/cao/pkg/registry"
)

// Error classes: what kind of failure a call had.
const (
	ClassNetwork          = "network"            // dial, reset, EOF, malformed response: retryable
	ClassTimeout          = "timeout"            // the step timeout elapsed: retryable
	ClassHTTPStatus       = "http_status"        // a non-2xx status; retryable for 408, 425, 429 and 5xx
	ClassTemplate         = "template"           // the request could not be rendered or is invalid: not retryable
	ClassResponseTooLarge = "response_too_large" // the body exceeded the size limit: not retryable
	ClassMock             = "mock"               // a simulated failure of a mock service: retryable
	ClassCancelled        = "cancelled"          // the parent context ended: not retryable, the caller decides
	ClassInvalidResponse  = "invalid_response"   // the response cannot be turned into an output: not retryable
)

// maxExcerpt bounds how much of an error body goes into Error.Message.
const maxExcerpt = 512

// Error is the typed failure of a call; Call and Probe return only *Error values.
type Error struct {
	Class      string        // one of the Class constants
	Retryable  bool          // whether another attempt of the same run may succeed
	RetryAfter time.Duration // the delay the service asked for (Retry-After and rate-limit headers); 0: none given
	HTTPStatus int           // the response status, 0 when no response was received
	Message    string        // human readable, with the service's secrets redacted
	// Budget is what a non-2xx answer said about the service's rate-limit budgets, as in Result.
	Budget *Budget
}

// Error returns the class and the redacted message.
func (e *Error) Error() string {
	return e.Class + ": " + e.Message
}

// newError builds an Error whose message is redacted with the service's secrets.
func newError(svc *registry.Service, class string, retryable bool, status int, format string, args ...any) *Error {
	return &Error{
		Class:      class,
		Retryable:  retryable,
		HTTPStatus: status,
		Message:    redact(svc, fmt.Sprintf(format, args...)),
	}
}

// redact replaces the service's secrets in s; a nil service redacts nothing.
func redact(svc *registry.Service, s string) string {
	if svc == nil || s == "" {
		return s
	}
	return svc.Redact(s)
}

// excerpt returns the start of an error body, redacted, at most maxExcerpt bytes, on one line.
// Redaction happens before truncation so that a cut can never leave part of a secret visible. A JSON
// body is redacted as outputs are (redactJSON), so that no escaping hides a secret.
func excerpt(svc *registry.Service, body []byte) string {
	var s string
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 && json.Valid(trimmed) {
		s = string(redactJSON(svc, trimmed))
	} else {
		s = redact(svc, string(body))
	}
	s = strings.TrimSpace(strings.ToValidUTF8(s, "\uFFFD"))
	if len(s) > maxExcerpt {
		cut := maxExcerpt
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strings.Join(strings.Fields(s), " ")
}

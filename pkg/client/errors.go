package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error codes of the API's error envelope that callers commonly branch on. The API may answer
// others; APIError.Code always holds the code it sent.
const (
	CodeInvalidJSON       = "invalid_json"
	CodeInvalidRequest    = "invalid_request"
	CodeInvalidInput      = "invalid_input"
	CodeInvalidJobID      = "invalid_job_id"
	CodeInvalidQuery      = "invalid_query"
	CodeFeatureNotFound   = "feature_not_found"
	CodeJobNotFound       = "job_not_found"
	CodeStepNotFound      = "step_not_found"
	CodeNotResumable      = "job_not_resumable"
	CodeAlreadyTerminal   = "job_already_terminal"
	CodeKeyInFlight       = "idempotency_key_in_flight"
	CodeKeyReused         = "idempotency_key_reused"
	CodeBodyTooLarge      = "body_too_large"
	CodeWebhookNotAllowed = "webhook_not_allowed"
	CodeUnauthorized      = "unauthorized"
	CodeForbidden         = "forbidden"
	CodeRateLimited       = "rate_limited"
	CodeUnavailable       = "service_unavailable"
)

// APIError is an error answer of the API: its HTTP status and the envelope
// {"success": false, "error": {"code", "message", "details"?}}. An answer that is not an envelope
// (a proxy's error page, say) has an empty Code and the start of the body as Message.
type APIError struct {
	Status  int    // HTTP status
	Code    string // the envelope's error.code, e.g. "job_not_found"
	Message string // the envelope's error.message
	// Details is the envelope's error.details decoded as JSON (nil when absent); for invalid_input it
	// is the list of field errors, see FieldErrors.
	Details any
	// RetryAfter is the answer's Retry-After (zero when absent), e.g. on 429 rate_limited and 503.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	code := e.Code
	if code == "" {
		code = strings.ToLower(strings.ReplaceAll(http.StatusText(e.Status), " ", "_"))
	}
	msg := fmt.Sprintf("%d %s", e.Status, code)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// FieldError is one entry of an invalid_input error's details: the path of the offending value
// ("business_name", "items[2].name") and what is wrong with it.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// FieldErrors returns the per-field details of an invalid_input error (nil for other errors).
func (e *APIError) FieldErrors() []FieldError {
	list, ok := e.Details.([]any)
	if !ok {
		return nil
	}
	var out []FieldError
	for _, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			continue
		}
		f, _ := m["field"].(string)
		msg, _ := m["message"].(string)
		out = append(out, FieldError{Field: f, Message: msg})
	}
	return out
}

// IsCode reports whether err is (or wraps) an *APIError with the given code.
func IsCode(err error, code string) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.Code == code
}

// IsNotFound reports whether err is a 404 answer (job_not_found, feature_not_found, ...).
func IsNotFound(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// readAPIError builds the APIError of a non-2xx answer (and consumes its body).
func readAPIError(resp *http.Response) *APIError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return parseAPIError(resp.StatusCode, resp.Header, body)
}

func parseAPIError(status int, h http.Header, body []byte) *APIError {
	e := &APIError{Status: status, RetryAfter: retryAfter(h)}
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Details any    `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil && env.Error.Code != "" {
		e.Code, e.Message, e.Details = env.Error.Code, env.Error.Message, env.Error.Details
		return e
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	e.Message = msg
	return e
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date (zero when absent or bad).
func retryAfter(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

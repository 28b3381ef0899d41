package httpapi

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/webhook"
)

// Error codes of the API's error envelope.
const (
	codeInvalidJSON        = "invalid_json"
	codeInvalidRequest     = "invalid_request"
	codeInvalidInput       = "invalid_input"
	codeInvalidJobID       = "invalid_job_id"
	codeInvalidQuery       = "invalid_query"
	codeFeatureNotFound    = "feature_not_found"
	codeJobNotFound        = "job_not_found"
	codeStepNotFound       = "step_not_found"
	codeNotFound           = "not_found"
	codeMethodNotAllowed   = "method_not_allowed"
	codeNotResumable       = "job_not_resumable"
	codeJobTerminal        = "job_already_terminal"
	codeKeyInFlight        = "idempotency_key_in_flight"
	codeKeyReused          = "idempotency_key_reused"
	codeBodyTooLarge       = "body_too_large"
	codeUnauthorized       = "unauthorized"
	codeForbidden          = "forbidden"
	codeRateLimited        = "rate_limited"
	codeWebhookNotAllowed  = "webhook_not_allowed"
	codeBadRequest         = "bad_request"
	codeUnavailable        = "service_unavailable"
	codeUnsupportedContent = "unsupported_media_type"
	codeInternal           = "internal_error"
)

// apiError is the body of every error response.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Details any    `json:"details,omitempty"`
}

func abort(c *gin.Context, status int, code, msg string, details any) {
	c.AbortWithStatusJSON(status, gin.H{"success": false, "error": apiError{Code: code, Message: msg, Details: details}})
}

// fail maps a domain error to its HTTP status and code: the one place that does so.
func (s *Server) fail(c *gin.Context, err error) {
	var (
		inErr   *orchestrator.InputError
		nameErr *orchestrator.UnknownNameError
	)
	var valid any
	if errors.As(err, &nameErr) {
		valid = gin.H{"valid": nameErr.Valid}
	}
	switch {
	case errors.As(err, &inErr):
		abort(c, http.StatusUnprocessableEntity, codeInvalidInput, "input_data does not match the feature's input schema", inErr.Fields)
	case errors.Is(err, webhook.ErrNotAllowed):
		abort(c, http.StatusUnprocessableEntity, codeWebhookNotAllowed, err.Error(), nil)
	case errors.Is(err, orchestrator.ErrFeatureNotFound):
		abort(c, http.StatusNotFound, codeFeatureNotFound, err.Error(), valid)
	case errors.Is(err, orchestrator.ErrJobNotFound):
		abort(c, http.StatusNotFound, codeJobNotFound, "job not found", nil)
	case errors.Is(err, orchestrator.ErrStepNotFound):
		abort(c, http.StatusUnprocessableEntity, codeStepNotFound, err.Error(), valid)
	case errors.Is(err, orchestrator.ErrNotResumable):
		abort(c, http.StatusConflict, codeNotResumable, err.Error(), nil)
	case errors.Is(err, orchestrator.ErrAlreadyTerminal):
		abort(c, http.StatusConflict, codeJobTerminal, err.Error(), nil)
	case errors.Is(err, orchestrator.ErrIdempotencyInFlight):
		c.Header("Retry-After", "1")
		abort(c, http.StatusConflict, codeKeyInFlight, "a request with this Idempotency-Key is still being processed", nil)
	case errors.Is(err, orchestrator.ErrIdempotencyMismatch):
		abort(c, http.StatusUnprocessableEntity, codeKeyReused, "this Idempotency-Key was used with a different request body", nil)
	case errors.Is(err, store.ErrUnavailable):
		c.Header("Retry-After", "5")
		abort(c, http.StatusServiceUnavailable, codeUnavailable, "the database is unavailable; retry later", nil)
	case errors.Is(err, c.Request.Context().Err()) && c.Request.Context().Err() != nil:
		abort(c, 499, "client_closed_request", "request cancelled", nil)
	default:
		s.log.Error("request failed", "method", c.Request.Method, "path", c.FullPath(), "err", err)
		if s.unavailable(c.Request.Context()) {
			c.Header("Retry-After", "5")
			abort(c, http.StatusServiceUnavailable, codeUnavailable, "a backend is unavailable; retry later", nil)
			return
		}
		abort(c, http.StatusInternalServerError, codeInternal, "internal error", nil)
	}
}

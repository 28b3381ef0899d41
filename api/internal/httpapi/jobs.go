package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/view"
)

// maxIdempotencyKey bounds the Idempotency-Key header length.
const maxIdempotencyKey = 255

// readJSON reads a JSON object body into dst (unknown fields rejected); it writes the error response
// and returns false on failure. An empty body is allowed when emptyOK.
func (s *Server) readJSON(c *gin.Context, dst any, emptyOK bool) bool {
	if ct := c.GetHeader("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			abort(c, http.StatusUnsupportedMediaType, codeUnsupportedContent, "Content-Type must be application/json", nil)
			return false
		}
	}
	limit := s.d.Settings.MaxBodyBytes
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		abort(c, http.StatusRequestEntityTooLarge, codeBodyTooLarge, fmt.Sprintf("request body larger than %d bytes", limit), nil)
		return false
	}
	if err != nil {
		abort(c, http.StatusBadRequest, codeInvalidJSON, "could not read the request body", nil)
		return false
	}
	if !utf8.Valid(body) {
		// encoding/json would store U+FFFD in place of each bad byte: refuse rather than change data.
		abort(c, http.StatusBadRequest, codeInvalidJSON, "the request body is not valid UTF-8", nil)
		return false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if emptyOK {
			return true
		}
		abort(c, http.StatusBadRequest, codeInvalidJSON, "request body is empty; expected a JSON object", nil)
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typeErr):
			abort(c, http.StatusBadRequest, codeInvalidRequest,
				fmt.Sprintf("field %q must be %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String())), nil)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			abort(c, http.StatusBadRequest, codeInvalidRequest, strings.TrimPrefix(err.Error(), "json: "), nil)
		default:
			abort(c, http.StatusBadRequest, codeInvalidJSON, "malformed JSON: "+err.Error(), nil)
		}
		return false
	}
	// Nothing but space may follow. (dec.More is no test: it is false before a "]" or "}", as it
	// looks for the next element of an enclosing array or object, so `{...}]` would pass.)
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		abort(c, http.StatusBadRequest, codeInvalidJSON, "malformed JSON: unexpected data after the object", nil)
		return false
	}
	return true
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	}
	return "of another type"
}

type createBody struct {
	FeatureName *string         `json:"feature_name"`
	InputData   json.RawMessage `json:"input_data"`
	WebhookURL  *string         `json:"webhook_url"`
}

func (s *Server) createJob(c *gin.Context) {
	var body createBody
	if !s.readJSON(c, &body, false) {
		return
	}
	if body.FeatureName == nil || strings.TrimSpace(*body.FeatureName) == "" {
		abort(c, http.StatusBadRequest, codeInvalidRequest, "feature_name is required", nil)
		return
	}
	hook := ""
	if body.WebhookURL != nil {
		hook = *body.WebhookURL
	}
	for name, v := range map[string]string{"feature_name": *body.FeatureName, "webhook_url": hook} {
		if !storableText(v) {
			abort(c, http.StatusBadRequest, codeInvalidRequest, name+" must not contain NUL characters", nil)
			return
		}
	}
	key := c.GetHeader("Idempotency-Key")
	if !storableText(key) {
		abort(c, http.StatusBadRequest, codeInvalidRequest, "Idempotency-Key must be valid UTF-8 without NUL characters", nil)
		return
	}
	if len(key) > maxIdempotencyKey {
		abort(c, http.StatusBadRequest, codeInvalidRequest, fmt.Sprintf("Idempotency-Key longer than %d characters", maxIdempotencyKey), nil)
		return
	}
	view, created, err := s.d.Jobs.CreateJob(c.Request.Context(), orchestrator.CreateRequest{
		Tenant: callerOf(c).Tenant, Feature: *body.FeatureName, Input: body.InputData, IdempotencyKey: key,
		WebhookURL: hook,
	})
	if err != nil {
		s.fail(c, err)
		return
	}
	if created {
		s.d.Metrics.JobsCreated.WithLabelValues(view.Job.FeatureName).Inc()
	} else {
		c.Header("Idempotent-Replayed", "true")
	}
	s.accepted(c, view)
}

// accepted writes the 202 answer of POST /jobs and /resume.
func (s *Server) accepted(c *gin.Context, v *orchestrator.JobView) {
	c.JSON(http.StatusAccepted, gin.H{
		"success": true, "job_id": v.Job.ID, "monitor_url": s.monitorURL(c, v.Job.ID), "ui_url": s.uiURL(c, v.Job.ID),
		"status": v.Job.Status,
	})
}

// uiURL is http(s)://HOST/ui/jobs/ID, the browser page of the job.
func (s *Server) uiURL(c *gin.Context, id string) string {
	return s.baseURL(c) + "/ui/jobs/" + id
}

// baseURL is CAO_PUBLIC_URL, or scheme://host of the request.
func (s *Server) baseURL(c *gin.Context) string {
	if pub := s.d.Settings.PublicURL; pub != "" {
		return pub
	}
	scheme := "http"
	if secureRequest(c) {
		scheme = "https"
	}
	return scheme + "://" + c.Request.Host
}

// monitorURL is ws(s)://HOST/ws/ID from CAO_PUBLIC_URL or the request.
func (s *Server) monitorURL(c *gin.Context, id string) string {
	return "ws" + strings.TrimPrefix(s.baseURL(c), "http") + "/ws/" + id
}

// jobID validates the :id path parameter.
func jobID(c *gin.Context) (string, bool) { return parseJobID(c, c.Param("id")) }

// parseJobID validates a job id from the request (answering 400 if it is not a UUID).
func parseJobID(c *gin.Context, id string) (string, bool) {
	u, err := uuid.Parse(id)
	if err != nil || len(id) != 36 {
		abort(c, http.StatusBadRequest, codeInvalidJobID, "job id must be a UUID", nil)
		return "", false
	}
	return u.String(), true
}

func (s *Server) getJob(c *gin.Context) {
	id, ok := jobID(c)
	if !ok {
		return
	}
	v, err := s.d.Jobs.GetJob(c.Request.Context(), scopeOf(c), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	j := jobObject(v)
	s.explainWaits(c.Request.Context(), &j)
	c.JSON(http.StatusOK, gin.H{"success": true, "job": j})
}

// explainWaits says why the job's QUEUED steps wait, where a worker noted it (a Redis read, made
// only when a step is QUEUED).
func (s *Server) explainWaits(ctx context.Context, j *view.Job) {
	queued := false
	for _, st := range j.Steps {
		queued = queued || st.Status == store.StepQueued
	}
	if !queued {
		return
	}
	w := s.d.Health.StepWaits(ctx, j.ID)
	for i := range j.Steps {
		if st := &j.Steps[i]; st.Status == store.StepQueued {
			if x, ok := w[st.Name]; ok {
				st.Waiting = &x
			}
		}
	}
}

func (s *Server) listJobs(c *gin.Context) {
	f := store.JobFilter{Scope: scopeOf(c), Limit: 50, Feature: c.Query("feature")}
	if !tenantFilter(c, &f) {
		return
	}
	if !storableText(f.Feature) {
		abort(c, http.StatusBadRequest, codeInvalidQuery, "feature must be valid UTF-8 without NUL characters", nil)
		return
	}
	if st := c.Query("status"); st != "" {
		f.Status = store.JobStatus(strings.ToUpper(st))
		if !f.Status.Valid() {
			abort(c, http.StatusBadRequest, codeInvalidQuery, "status must be one of PENDING, RUNNING, COMPLETED, FAILED, CANCELLED", nil)
			return
		}
	}
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 500 {
			abort(c, http.StatusBadRequest, codeInvalidQuery, "limit must be an integer from 1 to 500", nil)
			return
		}
		f.Limit = n
	}
	if cur := c.Query("cursor"); cur != "" {
		pos, err := decodeCursor(cur)
		if err != nil {
			abort(c, http.StatusBadRequest, codeInvalidQuery, "cursor is not one returned by this API", nil)
			return
		}
		f.After = pos
	}
	jobs, next, err := s.d.Jobs.ListJobs(c.Request.Context(), f)
	if err != nil {
		s.fail(c, err)
		return
	}
	out := make([]view.Job, len(jobs))
	for i := range jobs {
		out[i] = view.Summary(&jobs[i])
	}
	var nextCursor any
	if next != nil {
		nextCursor = encodeCursor(*next)
	}
	c.JSON(http.StatusOK, gin.H{"success": true, "jobs": out, "next_cursor": nextCursor})
}

func encodeCursor(c store.Cursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.CreatedAt.UnixMicro(), 10) + "|" + c.ID))
}

// maxCursorMicros is the end of year 9999 in µs since the epoch.
const maxCursorMicros = 253402300799999999

func decodeCursor(s string) (*store.Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	ts, id, ok := strings.Cut(string(b), "|")
	if !ok {
		return nil, errors.New("bad cursor")
	}
	us, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, err
	}
	// Cursors are creation times of jobs: anything outside years 1970-9999 was not made here (and
	// -2^63 µs would wrap around in the database and match every job).
	if us < 0 || us > maxCursorMicros {
		return nil, errors.New("cursor time out of range")
	}
	if _, err := uuid.Parse(id); err != nil {
		return nil, err
	}
	return &store.Cursor{CreatedAt: time.UnixMicro(us).UTC(), ID: id}, nil
}

type resumeBody struct {
	FromStep  string          `json:"from_step"`
	InputData json.RawMessage `json:"input_data"`
}

func (s *Server) resumeJob(c *gin.Context) {
	id, ok := jobID(c)
	if !ok {
		return
	}
	var body resumeBody
	if !s.readJSON(c, &body, true) {
		return
	}
	if !storableText(body.FromStep) {
		abort(c, http.StatusBadRequest, codeInvalidRequest, "from_step must not contain NUL characters", nil)
		return
	}
	v, err := s.d.Jobs.Resume(c.Request.Context(), scopeOf(c), id, orchestrator.ResumeRequest{FromStep: body.FromStep, Input: body.InputData})
	if err != nil {
		s.fail(c, err)
		return
	}
	s.accepted(c, v)
}

func (s *Server) cancelJob(c *gin.Context) {
	id, ok := jobID(c)
	if !ok {
		return
	}
	v, err := s.d.Jobs.Cancel(c.Request.Context(), scopeOf(c), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	c.JSON(http.StatusAccepted, gin.H{"success": true, "job_id": v.Job.ID, "status": v.Job.Status})
}

func (s *Server) jobEvents(c *gin.Context) {
	id, ok := jobID(c)
	if !ok {
		return
	}
	after := int64(0)
	if a := c.Query("after_seq"); a != "" {
		n, err := strconv.ParseInt(a, 10, 64)
		if err != nil || n < 0 {
			abort(c, http.StatusBadRequest, codeInvalidQuery, "after_seq must be a non-negative integer", nil)
			return
		}
		after = n
	}
	limit := 1000
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 10000 {
			abort(c, http.StatusBadRequest, codeInvalidQuery, "limit must be an integer from 1 to 10000", nil)
			return
		}
		limit = n
	}
	evs, err := s.d.Jobs.Events(c.Request.Context(), scopeOf(c), id, after, limit)
	if err != nil {
		s.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"success": true, "events": events.FromEvents(evs)})
}

func (s *Server) features(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"success": true, "features": featuresJSON(s.d.Registry)})
}

// storableText reports whether a query parameter or header value can be stored and compared as
// text: valid UTF-8 without NUL characters.
func storableText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

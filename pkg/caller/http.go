package caller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

// errorBodyLimit bounds how much of a non-2xx body is read for the error excerpt. It is far larger
// than maxExcerpt so that a secret cut by the read limit can never reach the excerpt.
const errorBodyLimit = 64 << 10

// drainLimit bounds how much of an unread body is discarded to keep the connection reusable.
const drainLimit = 4 << 10

// preparedRequest is a rendered HTTP request, ready to send.
type preparedRequest struct {
	method string
	url    *url.URL
	header http.Header
	body   []byte // nil: no body
}

func (c *Caller) callHTTP(ctx context.Context, call Call) (Result, *Error) {
	svc := call.Service
	req, err := prepare(call)
	if err != nil {
		return Result{}, err
	}
	timeout := timeoutOf(call.Step, svc)
	callCtx, cancel := withStepTimeout(ctx, timeout)
	defer cancel()

	ans, rerr := c.do(ctx, callCtx, svc, req, timeout, c.maxResponseBytes(svc))
	res := Result{HTTPStatus: ans.status}
	if ans.header != nil && svc.BudgetHeaders {
		res.Budget = answerBudget(ans, c.cfg.Now())
	}
	if rerr != nil {
		rerr.Budget = res.Budget
		return res, rerr
	}
	res.Output = outputJSON(svc, ans.body)
	return res, nil
}

func (c *Caller) probe(ctx context.Context, svc *registry.Service) *Error {
	method := strings.ToUpper(strings.TrimSpace(svc.Health.Method))
	if method == "" {
		method = http.MethodGet
	}
	u, err := joinURL(svc, svc.Health.Path, nil)
	if err != nil {
		return err
	}
	h := http.Header{}
	for k, v := range svc.Headers {
		h.Set(k, v)
	}
	h.Set("User-Agent", UserAgent)
	timeout := svc.Timeout
	if timeout <= 0 {
		timeout = registry.DefaultTimeout
	}
	callCtx, cancel := withStepTimeout(ctx, timeout)
	defer cancel()
	// Only the status matters: read a bounded amount, and a large 2xx body is still healthy.
	_, rerr := c.do(ctx, callCtx, svc, &preparedRequest{method: method, url: u, header: h}, timeout, errorBodyLimit)
	if rerr != nil && rerr.Class == ClassResponseTooLarge {
		return nil
	}
	return rerr
}

// maxResponseBytes returns the response size limit for svc.
func (c *Caller) maxResponseBytes(svc *registry.Service) int64 {
	switch {
	case c.cfg.MaxResponseBytes > 0:
		return c.cfg.MaxResponseBytes
	case svc.MaxResponseBytes > 0:
		return svc.MaxResponseBytes
	}
	return registry.DefaultMaxResponseBytes
}

// answer is what do got back: the status and header (zero without a response) and the body of a
// 2xx response.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends req and returns the answer, with a classified error unless it is a 2xx response within
// limit.
func (c *Caller) do(parent, callCtx context.Context, svc *registry.Service, req *preparedRequest, timeout time.Duration, limit int64) (answer, *Error) {
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hreq, err := http.NewRequestWithContext(callCtx, req.method, req.url.String(), body)
	if err != nil {
		return answer{}, newError(svc, ClassTemplate, false, 0, "service %q: build request: %v", svc.Name, err)
	}
	hreq.Header = req.header

	resp, err := c.cfg.HTTPClient.Do(hreq)
	if err != nil {
		return answer{}, transportError(parent, callCtx, svc, timeout, err)
	}
	defer func() {
		_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
		_ = resp.Body.Close()
	}()

	status := resp.StatusCode
	got := answer{status: status, header: resp.Header}
	if status >= 200 && status < 300 {
		data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
		if err != nil {
			return got, withStatus(transportError(parent, callCtx, svc, timeout, err), status)
		}
		if int64(len(data)) > limit {
			return got, newError(svc, ClassResponseTooLarge, false, status,
				"service %q: HTTP %d response body exceeds the limit of %d bytes (max_response_bytes)", svc.Name, status, limit)
		}
		got.body = data
		return got, nil
	}

	// The error body only feeds the message; a failure to read it does not change the classification.
	data, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
	return got, statusError(svc, resp, data, c.cfg.Now())
}

// statusError classifies a non-2xx response.
func statusError(svc *registry.Service, resp *http.Response, body []byte, now time.Time) *Error {
	status := resp.StatusCode
	var e *Error
	switch {
	case status >= 300 && status < 400:
		where := ""
		if loc, err := resp.Location(); err == nil {
			where = " to " + loc.Scheme + "://" + loc.Host
		}
		e = newError(svc, ClassHTTPStatus, false, status,
			"service %q: HTTP %s: redirect%s not followed", svc.Name, statusText(status), where)
	case status < 200 || status > 599:
		e = newError(svc, ClassInvalidResponse, false, status, "service %q: unexpected HTTP status %d", svc.Name, status)
	default:
		msg := fmt.Sprintf("service %q: HTTP %s", svc.Name, statusText(status))
		if ex := excerpt(svc, body); ex != "" {
			msg += ": " + ex
		}
		e = &Error{Class: ClassHTTPStatus, Retryable: retryableStatus(status), HTTPStatus: status, Message: redact(svc, msg)}
	}
	if status >= 400 {
		useReset := status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable
		e.RetryAfter = retryAfter(resp.Header, now, useReset)
	}
	return e
}

// retryableStatus reports whether another attempt may get a different answer.
func retryableStatus(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return status >= 500 && status <= 599
}

func statusText(status int) string {
	if t := http.StatusText(status); t != "" {
		return fmt.Sprintf("%d %s", status, t)
	}
	return fmt.Sprint(status)
}

func withStatus(e *Error, status int) *Error {
	e.HTTPStatus = status
	return e
}

// transportError classifies a failure to get or read a response: cancelled, timeout or network.
// The message never holds the request URL's query or user info (either may hold a key) and is
// redacted on top of that.
func transportError(parent, callCtx context.Context, svc *registry.Service, timeout time.Duration, err error) *Error {
	if e := contextError(parent, callCtx, svc, timeout); e != nil {
		return e
	}
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = fmt.Sprintf("%s %s: %v", ue.Op, safeURL(ue.URL), ue.Err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return newError(svc, ClassTimeout, true, 0, "service %q: %s", svc.Name, msg)
	}
	return newError(svc, ClassNetwork, true, 0, "service %q: %s", svc.Name, msg)
}

// safeURL keeps only the scheme, host and path of a URL for messages.
func safeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}

// Request is a step's request as rendered for one call, without its headers (which hold secrets):
// what a budget's reserve template reads as .request.
type Request struct {
	Method string
	Path   string            // rendered and escaped, relative to the service's base URL
	Query  map[string]string // the step's query parameters, rendered (not the base URL's own)
	Body   any               // the JSON body as a value; nil when the request has no body
	// HasBody is false for a request sent without a body (a GET without one, say).
	HasBody bool
}

// Data returns the request as template data: {"method", "path", "query", "body"}.
func (r *Request) Data() map[string]any {
	if r == nil {
		return map[string]any{}
	}
	q := make(map[string]any, len(r.Query))
	for k, v := range r.Query {
		q[k] = v
	}
	return map[string]any{"method": r.Method, "path": r.Path, "query": q, "body": r.Body}
}

// RenderRequest renders the request a call would send, with the same code the call uses, without
// its headers; nil for a mock service, which sends no request. The error is an *Error of class
// template, as the call itself would fail with.
func RenderRequest(call Call) (*Request, error) {
	if call.Service == nil || call.Step == nil || call.Service.Kind != registry.KindHTTP {
		return nil, nil
	}
	data, derr := templateData(call)
	if derr != nil {
		return nil, derr
	}
	r, err := renderRequest(call, data)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// templateData is the data the call's templates are executed against; a stored input or output that
// cannot be decoded fails the call as a template would.
func templateData(call Call) (map[string]any, *Error) {
	data, err := call.Data.Map()
	if err != nil {
		return nil, newError(call.Service, ClassTemplate, false, 0, "step %q: %v", call.Step.Name, err)
	}
	return data, nil
}

// renderRequest renders the method, path, query and body of the step's request from data.
//
// Path safety: every string in the template data is url.PathEscape'd (and "." / ".." are escaped
// too) before the path template runs, so a value like "//evil.example/x" or "../admin" becomes one
// opaque path segment. Slashes in the rendered path therefore only come from the registry file.
// A templated path holds no "?" (the registry refuses it), so any "?" or "#" in the rendered path
// came from the data by another way (an object key printed as JSON, printf "%c" of a number): it is
// escaped too, and input can never add a query or a fragment.
func renderRequest(call Call, data map[string]any) (*Request, *Error) {
	svc, step := call.Service, call.Step
	r := step.Request
	if r == nil {
		r = &registry.Request{}
	}
	out := &Request{Method: strings.ToUpper(strings.TrimSpace(r.Method)), Path: r.Path}
	if out.Method == "" {
		out.Method = http.MethodPost
	}
	if r.PathTemplate != nil {
		s, err := r.PathTemplate.ExecuteString(pathEscaped(data))
		if err != nil {
			return nil, templateError(svc, step, "path", err)
		}
		out.Path = s
		if !r.PathTemplate.IsStatic() {
			out.Path = pathDelims.Replace(out.Path)
		}
	}
	out.Query = make(map[string]string, len(r.QueryTemplates))
	for name, t := range r.QueryTemplates {
		s, err := t.ExecuteString(data)
		if err != nil {
			return nil, templateError(svc, step, "query."+name, err)
		}
		out.Query[name] = s
	}
	switch {
	case step.Request == nil && out.Method != http.MethodGet && out.Method != http.MethodHead:
		out.Body, out.HasBody = map[string]any{}, true // the documented default request: POST {} to "/"
	case r.BodyTemplate != nil:
		v, err := r.BodyTemplate.Execute(data)
		if err != nil {
			return nil, templateError(svc, step, "body", err)
		}
		out.Body, out.HasBody = v, true
	}
	return out, nil
}

// prepare renders the step's request (renderRequest) and its headers. On top of the path safety of
// renderRequest, the final URL must keep the base URL's scheme, host and user info.
func prepare(call Call) (*preparedRequest, *Error) {
	svc, step := call.Service, call.Step
	data, derr := templateData(call)
	if derr != nil {
		return nil, derr
	}
	rr, rerr := renderRequest(call, data)
	if rerr != nil {
		return nil, rerr
	}
	r := step.Request
	if r == nil {
		r = &registry.Request{}
	}

	query := url.Values{}
	for name, v := range rr.Query {
		query.Set(name, v)
	}
	u, uerr := joinURL(svc, rr.Path, query)
	if uerr != nil {
		return nil, uerr
	}

	h := http.Header{}
	for k, v := range svc.Headers {
		h.Set(k, v)
	}
	for k, t := range r.HeaderTemplates {
		s, err := t.ExecuteString(data)
		if err != nil {
			return nil, templateError(svc, step, "headers."+k, err)
		}
		if strings.ContainsAny(s, "\r\n\x00") {
			return nil, newError(svc, ClassTemplate, false, 0,
				"step %q: header %q renders to a value with a line break or NUL", step.Name, k)
		}
		h.Set(k, s)
	}
	if h.Get("Accept") == "" {
		h.Set("Accept", "application/json")
	}
	h.Set("User-Agent", UserAgent)
	h.Set("Idempotency-Key", call.IdempotencyKey)

	var body []byte
	if rr.HasBody {
		b, err := render.MarshalJSON(rr.Body)
		if err != nil {
			return nil, templateError(svc, step, "body", err)
		}
		body = b
		h.Set("Content-Type", "application/json")
	}
	return &preparedRequest{method: rr.Method, url: u, header: h, body: body}, nil
}

func templateError(svc *registry.Service, step *registry.Step, field string, err error) *Error {
	return newError(svc, ClassTemplate, false, 0, "step %q: render request %s: %v", step.Name, field, err)
}

// joinURL appends path to the service's base URL (keeping the base path, as API base URLs like
// https://api.example.com/v1 expect) and adds the query, keeping any query the base URL has.
func joinURL(svc *registry.Service, path string, query url.Values) (*url.URL, *Error) {
	base, err := url.Parse(svc.BaseURL)
	if err != nil || base.Scheme == "" || base.Host == "" {
		// The error text would repeat the base URL, which may hold a key: say only that it is bad.
		return nil, newError(svc, ClassTemplate, false, 0, "service %q: base_url is not an absolute URL", svc.Name)
	}
	prefix := *base
	prefix.RawQuery, prefix.Fragment, prefix.RawFragment = "", "", ""
	if path != "" && !strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "?") {
		path = "/" + path
	}
	u, err := url.Parse(strings.TrimSuffix(prefix.String(), "/") + path)
	if err != nil {
		return nil, newError(svc, ClassTemplate, false, 0, "service %q: rendered path does not form a valid URL: %v", svc.Name, err)
	}
	if u.Scheme != base.Scheme || u.Host != base.Host || u.User.String() != base.User.String() {
		return nil, newError(svc, ClassTemplate, false, 0,
			"service %q: rendered path would leave the base URL's host; refused", svc.Name)
	}
	u.Fragment, u.RawFragment = "", ""
	parts := make([]string, 0, 3)
	for _, q := range []string{base.RawQuery, u.RawQuery, query.Encode()} {
		if q != "" {
			parts = append(parts, q)
		}
	}
	u.RawQuery = strings.Join(parts, "&")
	return u, nil
}

// pathDelims escapes what would end the path of a URL.
var pathDelims = strings.NewReplacer("?", "%3F", "#", "%23")

// pathEscaped returns a copy of the template data whose strings are url.PathEscape'd.
func pathEscaped(v any) any {
	switch x := v.(type) {
	case string:
		switch x {
		case ".":
			return "%2E"
		case "..":
			return "%2E%2E"
		}
		return url.PathEscape(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = pathEscaped(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = pathEscaped(e)
		}
		return out
	case []string:
		out := make([]string, len(x))
		for i, e := range x {
			out[i] = url.PathEscape(e)
		}
		return out
	case json.RawMessage:
		var d any
		if err := json.Unmarshal(x, &d); err != nil {
			return x
		}
		return pathEscaped(d)
	}
	return v
}

// outputJSON turns a 2xx body into the step output: JSON as is, empty as null, anything else as a JSON
// string, with the service's secrets redacted in every case.
func outputJSON(svc *registry.Service, body []byte) json.RawMessage {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return json.RawMessage("null")
	}
	if !json.Valid(body) {
		return jsonString(redact(svc, string(body)))
	}
	return redactJSON(svc, body)
}

// redactJSON removes the service's secrets from a valid JSON document. The raw text is redacted first
// (keeping the document byte for byte when no secret appears); Service.Redact knows the usual
// escaped forms of each secret, so "\u003c" or "\/" hide nothing. If that breaks the JSON (a secret
// matched across the document's own quotes) the redacted text is stored as a JSON string, so the
// result is always valid JSON. Then string values are checked once more after decoding, which catches
// any other escaping (and a JSON document inside a string); only then is the document re-encoded.
func redactJSON(svc *registry.Service, body []byte) json.RawMessage {
	if svc == nil || len(svc.Secrets) == 0 {
		return body
	}
	text := redact(svc, string(body))
	if text != string(body) {
		if !json.Valid([]byte(text)) {
			return jsonString(text)
		}
		body = []byte(text)
	}
	if !bytes.Contains(body, []byte(`\`)) {
		return body // no escape sequence: the raw redaction saw every string as it decodes
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return body
	}
	v, changed := redactValue(svc, v)
	if !changed {
		return body
	}
	b, err := render.MarshalJSON(v)
	if err != nil {
		return jsonString(text)
	}
	return b
}

// redactValue redacts every string (and object key) of a decoded JSON value.
func redactValue(svc *registry.Service, v any) (any, bool) {
	switch x := v.(type) {
	case string:
		r := redactString(svc, x)
		return r, r != x
	case map[string]any:
		changed := false
		out := make(map[string]any, len(x))
		for k, e := range x {
			rk := redactString(svc, k)
			re, c := redactValue(svc, e)
			changed = changed || c || rk != k
			out[rk] = re
		}
		return out, changed
	case []any:
		changed := false
		for i, e := range x {
			re, c := redactValue(svc, e)
			changed = changed || c
			x[i] = re
		}
		return x, changed
	}
	return v, false
}

// redactString redacts one decoded string of a document, in which a secret may appear in any of
// the forms Service.Redact knows (a URL-encoded one, say).
func redactString(svc *registry.Service, s string) string {
	return redact(svc, s)
}

// jsonString encodes s as a JSON string value.
func jsonString(s string) json.RawMessage {
	b, err := render.MarshalJSON(strings.ToValidUTF8(s, "\uFFFD"))
	if err != nil {
		return json.RawMessage("null") // cannot happen for a valid UTF-8 string
	}
	return b
}

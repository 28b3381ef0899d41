// Package client is a small typed Go client of CAO's REST and WebSocket API (see CONTRACT.md):
// start, read, list, cancel and resume jobs, and follow a job live with Watch, which reconnects
// with after_seq on any drop and hands every event to the caller exactly once.
//
//	c, err := client.New("http://127.0.0.1:8000", client.WithAPIKey(os.Getenv("CAO_API_KEY")))
//	started, err := c.Start(ctx, client.StartRequest{Feature: "business_plan",
//		Input: map[string]any{"business_name": "AI Toys"}})
//	job, err := c.Watch(ctx, started.JobID, func(m client.Message) error {
//		fmt.Println(m.Seq, m.Type, m.Step, m.Status)
//		return nil
//	})
//
// Errors the API answers are *APIError (status, code, message, details, Retry-After).
//
// Retries. Calls that are safe to repeat are retried on a connection error, 429, 502, 503 and 504,
// honouring Retry-After, at most WithRetries times (default 3): every GET, Cancel (cancelling twice
// has the effect of cancelling once; a repeat that finds the job already CANCELLED answers 409
// job_already_terminal), Ticket (an unused ticket just expires), and Start when it carries an
// IdempotencyKey (the server replays the first answer; 409 idempotency_key_in_flight is retried as
// well). Start without a key and Resume are retried only on 429, which the API answers before it
// does anything, so a retry cannot create a second job or a second run.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Defaults of the options.
const (
	DefaultRetries      = 3
	DefaultMaxRetryWait = 30 * time.Second
	DefaultReconnects   = 10
	DefaultTimeout      = 60 * time.Second
)

// maxBody bounds a success answer read into memory (a job with large step outputs).
const maxBody = 256 << 20

// Client calls one CAO API. It is safe for concurrent use.
type Client struct {
	base         *url.URL
	key          string
	hc           *http.Client
	retries      int
	maxRetryWait time.Duration
	reconnects   int
	tickets      bool
	userAgent    string
	backoffBase  time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithAPIKey sends key as "Authorization: Bearer KEY" on every request, the WebSocket handshake
// included. An empty key sends nothing (for an API with CAO_AUTH=off or in dev mode).
func WithAPIKey(key string) Option { return func(c *Client) { c.key = strings.TrimSpace(key) } }

// WithHTTPClient uses hc for every request (default: an http.Client with a 60 s timeout, which
// bounds each REST call and the WebSocket handshake, not a watch).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithRetries sets how many times a retryable call is repeated after its first attempt (default 3;
// 0 disables retries). See the package documentation for which calls are retryable.
func WithRetries(n int) Option { return func(c *Client) { c.retries = max(n, 0) } }

// WithMaxRetryWait is the longest Retry-After the client waits for before a retry (default 30 s);
// an answer asking for longer is returned to the caller as is.
func WithMaxRetryWait(d time.Duration) Option { return func(c *Client) { c.maxRetryWait = d } }

// WithReconnects sets how many consecutive failed reconnections Watch makes before it gives up
// (default 10, with a backoff from 100 ms to 5 s). Any delivered message resets the count.
func WithReconnects(n int) Option { return func(c *Client) { c.reconnects = max(n, 0) } }

// WithWebSocketTickets makes Watch authenticate its WebSocket with a single-use ticket from
// POST /api/v1/ws-tickets (one per connection) instead of the Authorization header, for proxies
// that drop headers on upgrade requests. Without an API key it changes nothing.
func WithWebSocketTickets() Option { return func(c *Client) { c.tickets = true } }

// WithUserAgent sets the User-Agent header (default "cao-go-client").
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client of the API at baseURL, e.g. "http://127.0.0.1:8000" (a path prefix, for an
// API behind a reverse proxy, is kept).
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil {
		return nil, fmt.Errorf("client: base URL %q: %w", baseURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q: expected http://host[:port] or https://host[:port]", baseURL)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	c := &Client{
		base: u, hc: &http.Client{Timeout: DefaultTimeout}, retries: DefaultRetries,
		maxRetryWait: DefaultMaxRetryWait, reconnects: DefaultReconnects, userAgent: "cao-go-client",
		backoffBase: 100 * time.Millisecond,
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: DefaultTimeout}
	}
	return c, nil
}

// BaseURL returns the API's base URL as the client uses it.
func (c *Client) BaseURL() string { return c.base.String() }

// retryPolicy says when a call may be repeated.
type retryPolicy int

const (
	// retrySafe: the call may be repeated after any failure that is not an answer of the handler
	// (connection errors, 429, 502, 503, 504, 409 idempotency_key_in_flight).
	retrySafe retryPolicy = iota
	// retryRejected: only after 429, which the API answers before running the handler.
	retryRejected
)

// call is one API request.
type call struct {
	method string
	path   string // below the base URL, already escaped
	query  url.Values
	body   any // JSON-encoded when not nil
	header http.Header
	retry  retryPolicy
}

// do runs cl with its retries and decodes a 2xx answer's JSON body into out (when not nil).
func (c *Client) do(ctx context.Context, cl call, out any) error {
	_, err := c.doHeader(ctx, cl, out)
	return err
}

// doHeader is do that also returns the headers of the successful answer.
func (c *Client) doHeader(ctx context.Context, cl call, out any) (http.Header, error) {
	var body []byte
	if cl.body != nil {
		b, err := json.Marshal(cl.body)
		if err != nil {
			return nil, fmt.Errorf("client: encode request: %w", err)
		}
		body = b
	}
	for attempt := 0; ; attempt++ {
		respBody, hdr, err := c.once(ctx, cl, body)
		if err == nil {
			if out == nil || len(bytes.TrimSpace(respBody)) == 0 {
				return hdr, nil
			}
			if err := json.Unmarshal(respBody, out); err != nil {
				return nil, fmt.Errorf("client: %s %s: decode answer: %w", cl.method, cl.path, err)
			}
			return hdr, nil
		}
		wait, ok := c.retryable(cl.retry, err, attempt)
		if !ok || attempt >= c.retries {
			return nil, err
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// once sends one attempt and returns the body and headers of a 2xx answer, or an *APIError, or a
// transport error.
func (c *Client) once(ctx context.Context, cl call, body []byte) ([]byte, http.Header, error) {
	u := c.url(cl.path, cl.query)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("client: %w", err)
	}
	for k, vs := range cl.header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.authorize(req.Header)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, readAPIError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, nil, fmt.Errorf("client: %s %s: read answer: %w", cl.method, u, err)
	}
	return b, resp.Header, nil
}

// authorize sets the headers every request carries.
func (c *Client) authorize(h http.Header) {
	h.Set("Accept", "application/json")
	if c.userAgent != "" {
		h.Set("User-Agent", c.userAgent)
	}
	if c.key != "" {
		h.Set("Authorization", "Bearer "+c.key)
	}
}

// url joins the base URL, an escaped path and a query.
func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path += path
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// retryable reports whether err may be retried under p, and after how long.
func (c *Client) retryable(p retryPolicy, err error, attempt int) (time.Duration, bool) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return 0, false
	}
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		// No answer: the request may or may not have reached the handler.
		return c.backoff(attempt), p == retrySafe
	}
	switch {
	case apiErr.Status == http.StatusTooManyRequests:
	case p != retrySafe:
		return 0, false
	case apiErr.Status == http.StatusServiceUnavailable, apiErr.Status == http.StatusBadGateway,
		apiErr.Status == http.StatusGatewayTimeout, apiErr.Code == CodeKeyInFlight:
	default:
		return 0, false
	}
	if apiErr.RetryAfter > 0 {
		if apiErr.RetryAfter > c.maxRetryWait {
			return 0, false
		}
		return apiErr.RetryAfter, true
	}
	return c.backoff(attempt), true
}

// backoff is the wait before retry attempt+1 when the server did not say: exponential from
// backoffBase, capped at 5 s, with jitter (50-100 %).
func (c *Client) backoff(attempt int) time.Duration {
	d := c.backoffBase << min(attempt, 10)
	d = min(d, 5*time.Second)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Health calls GET /health (liveness, no I/O on the server) and returns nil when the API answers
// 200 {"status": "ok"}. It is not retried.
func (c *Client) Health(ctx context.Context) error {
	var out struct {
		Status string `json:"status"`
	}
	b, _, err := c.once(ctx, call{method: http.MethodGet, path: "/health"}, nil)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("client: /health: decode answer: %w", err)
	}
	if out.Status != "ok" {
		return fmt.Errorf("client: /health answered status %q", out.Status)
	}
	return nil
}

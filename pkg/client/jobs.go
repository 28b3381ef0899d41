package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// jobPath is /api/v1/jobs/{id} with the id escaped, plus suffix.
func jobPath(id, suffix string) string {
	return "/api/v1/jobs/" + url.PathEscape(id) + suffix
}

func requireID(id string) error {
	if strings.TrimSpace(id) == "" {
		return errors.New("client: job id is empty")
	}
	return nil
}

// rawInput encodes an input value for input_data (nil: none).
func rawInput(v any) (json.RawMessage, error) {
	switch in := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if !json.Valid(in) {
			return nil, errors.New("client: input is not valid JSON")
		}
		return in, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("client: encode input: %w", err)
	}
	return b, nil
}

// Start creates a job (POST /api/v1/jobs). With an IdempotencyKey a repeat answers the first job
// (Accepted.Replayed) and the call is retried on connection errors, 429 and 503; without one it is
// retried only on 429.
func (c *Client) Start(ctx context.Context, req StartRequest) (*Accepted, error) {
	if strings.TrimSpace(req.Feature) == "" {
		return nil, errors.New("client: Start: Feature is empty")
	}
	in, err := rawInput(req.Input)
	if err != nil {
		return nil, err
	}
	body := struct {
		Feature    string          `json:"feature_name"`
		Input      json.RawMessage `json:"input_data,omitempty"`
		WebhookURL string          `json:"webhook_url,omitempty"`
	}{req.Feature, in, req.WebhookURL}
	cl := call{method: http.MethodPost, path: "/api/v1/jobs", body: body, retry: retryRejected}
	if req.IdempotencyKey != "" {
		cl.header = http.Header{"Idempotency-Key": {req.IdempotencyKey}}
		cl.retry = retrySafe
	}
	var out Accepted
	hdr, err := c.doHeader(ctx, cl, &out)
	if err != nil {
		return nil, err
	}
	out.Replayed = strings.EqualFold(hdr.Get("Idempotent-Replayed"), "true")
	return &out, nil
}

// Get returns the job with its steps (GET /api/v1/jobs/{id}).
func (c *Client) Get(ctx context.Context, id string) (*Job, error) {
	if err := requireID(id); err != nil {
		return nil, err
	}
	var out struct {
		Job *Job `json:"job"`
	}
	if err := c.do(ctx, call{method: http.MethodGet, path: jobPath(id, "")}, &out); err != nil {
		return nil, err
	}
	if out.Job == nil {
		return nil, errors.New("client: the answer has no job")
	}
	return out.Job, nil
}

// List returns one page of the caller's jobs, newest first (GET /api/v1/jobs).
func (c *Client) List(ctx context.Context, opts ListOptions) (*Page, error) {
	q := url.Values{}
	if opts.Status != "" {
		q.Set("status", string(opts.Status))
	}
	if opts.Feature != "" {
		q.Set("feature", opts.Feature)
	}
	if opts.Tenant != "" {
		q.Set("tenant", opts.Tenant)
	}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	var out Page
	if err := c.do(ctx, call{method: http.MethodGet, path: "/api/v1/jobs", query: q}, &out); err != nil {
		return nil, err
	}
	if out.Jobs == nil {
		out.Jobs = []Job{}
	}
	return &out, nil
}

// All iterates over every job List would return across pages (opts.Limit is the page size),
// following next_cursor. An error is yielded once, and ends the iteration.
func (c *Client) All(ctx context.Context, opts ListOptions) iter.Seq2[Job, error] {
	return func(yield func(Job, error) bool) {
		for {
			p, err := c.List(ctx, opts)
			if err != nil {
				yield(Job{}, err)
				return
			}
			for _, j := range p.Jobs {
				if !yield(j, nil) {
					return
				}
			}
			if p.NextCursor == "" || len(p.Jobs) == 0 {
				return
			}
			opts.Cursor = p.NextCursor
		}
	}
}

// eventsPage is the server's default (and our) page size of GET /events.
const eventsPage = 1000

// Events returns the job's events after seq afterSeq, in seq order (GET /api/v1/jobs/{id}/events,
// every page of it). The events have the shape of the WebSocket's job and step messages.
func (c *Client) Events(ctx context.Context, id string, afterSeq int64) ([]Message, error) {
	if err := requireID(id); err != nil {
		return nil, err
	}
	all := []Message{}
	for {
		q := url.Values{"after_seq": {strconv.FormatInt(afterSeq, 10)}, "limit": {strconv.Itoa(eventsPage)}}
		var out struct {
			Events []Message `json:"events"`
		}
		if err := c.do(ctx, call{method: http.MethodGet, path: jobPath(id, "/events"), query: q}, &out); err != nil {
			return nil, err
		}
		all = append(all, out.Events...)
		if len(out.Events) < eventsPage {
			return all, nil
		}
		afterSeq = out.Events[len(out.Events)-1].Seq
	}
}

// Cancel ends a job (POST /api/v1/jobs/{id}/cancel): waiting and running steps become CANCELLED.
// A job that already ended answers 409 job_already_terminal.
func (c *Client) Cancel(ctx context.Context, id string) (*Accepted, error) {
	if err := requireID(id); err != nil {
		return nil, err
	}
	var out Accepted
	if err := c.do(ctx, call{method: http.MethodPost, path: jobPath(id, "/cancel")}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Resume restarts a FAILED or CANCELLED job, or a stuck one (POST /api/v1/jobs/{id}/resume): the
// steps that did not succeed run again, and with FromStep that step and everything downstream of it.
// A COMPLETED job answers 409 job_not_resumable. Retried only on 429.
func (c *Client) Resume(ctx context.Context, id string, req ResumeRequest) (*Accepted, error) {
	if err := requireID(id); err != nil {
		return nil, err
	}
	in, err := rawInput(req.Input)
	if err != nil {
		return nil, err
	}
	body := struct {
		FromStep string          `json:"from_step,omitempty"`
		Input    json.RawMessage `json:"input_data,omitempty"`
	}{req.FromStep, in}
	var out Accepted
	if err := c.do(ctx, call{method: http.MethodPost, path: jobPath(id, "/resume"), body: body, retry: retryRejected}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Features lists the registered features and their step graphs (GET /api/v1/features).
func (c *Client) Features(ctx context.Context) ([]Feature, error) {
	var out struct {
		Features []Feature `json:"features"`
	}
	if err := c.do(ctx, call{method: http.MethodGet, path: "/api/v1/features"}, &out); err != nil {
		return nil, err
	}
	return out.Features, nil
}

// Ticket issues a single-use ticket to open the job's WebSocket as /ws/{id}?ticket=T within 60 s
// (POST /api/v1/ws-tickets); for clients that cannot send headers on the handshake.
func (c *Client) Ticket(ctx context.Context, jobID string) (*Ticket, error) {
	if err := requireID(jobID); err != nil {
		return nil, err
	}
	var out Ticket
	body := map[string]string{"job_id": jobID}
	if err := c.do(ctx, call{method: http.MethodPost, path: "/api/v1/ws-tickets", body: body}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

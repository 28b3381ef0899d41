package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Watch follows a job live over its WebSocket (/ws/{id}) and calls fn with every message in seq
// order: first a snapshot (Message.Job is the job at Message.Seq), then each job and step change.
// It returns when the job has ended (COMPLETED, FAILED or CANCELLED) with the job as Get returns it
// then, when fn returns an error (that error), or when ctx ends.
//
// Any drop of the connection (network, server restart, a slow-client close) is followed by a
// reconnection with after_seq set to the last seq fn received, so fn sees every event exactly once
// and in order: messages at or below that seq are dropped, and a gap in the seqs (which the server
// never sends) is treated as a drop. Connections fail over to any API replica. A failed
// (re)connection is retried with a backoff (honouring Retry-After) up to WithReconnects times in a
// row (WithRetries times before the first connection succeeded); answers that cannot change by
// retrying (401, 403, 404 job_not_found, 400) end the watch with their *APIError at once.
//
// The handshake sends the API key as "Authorization: Bearer KEY", or, with WithWebSocketTickets,
// a fresh ticket from Ticket in the query for each connection. fn runs on Watch's goroutine; a
// slow fn only delays reading (the server closes a client that falls far behind, and Watch
// reconnects without losing anything).
func (c *Client) Watch(ctx context.Context, id string, fn func(Message) error) (*Job, error) {
	return c.watch(ctx, id, -1, fn)
}

// WatchAfter is Watch without the snapshot: fn receives the events after seq afterSeq (replayed
// from the event log, then live) until the job ends. A job that had already ended at or before
// afterSeq returns at once.
func (c *Client) WatchAfter(ctx context.Context, id string, afterSeq int64, fn func(Message) error) (*Job, error) {
	if afterSeq < 0 {
		return nil, errors.New("client: WatchAfter: afterSeq must not be negative")
	}
	return c.watch(ctx, id, afterSeq, fn)
}

// watcher is the state of one Watch across its connections.
type watcher struct {
	c     *Client
	id    string
	start bool  // a snapshot was received (or after_seq given): reconnect with after_seq=last
	last  int64 // seq of the last message handed to fn
	final *Job  // the job, when it ended
}

// callbackError carries an error that ends the watch as is: one returned by the caller's fn, or the
// failure to read the job after its terminal event.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// errReconnect ends one connection's read loop so that a new connection resumes from w.last.
var errReconnect = errors.New("reconnect")

func (c *Client) watch(ctx context.Context, id string, after int64, fn func(Message) error) (*Job, error) {
	if err := requireID(id); err != nil {
		return nil, err
	}
	w := &watcher{c: c, id: id, start: after >= 0, last: max(after, 0)}
	connected := false
	failures := 0 // consecutive connections that delivered nothing
	var lastErr error
	for {
		if failures > 0 {
			limit := c.reconnects
			if !connected {
				limit = c.retries
			}
			if failures > limit {
				return nil, fmt.Errorf("client: watch job %s: giving up after %d failed connections: %w", id, failures, lastErr)
			}
			if err := sleep(ctx, c.reconnectWait(lastErr, failures)); err != nil {
				return nil, err
			}
		}
		conn, err := w.dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if permanent(err) {
				return nil, err
			}
			failures++
			lastErr = err
			continue
		}
		connected = true
		delivered, err := w.read(ctx, conn, fn)
		_ = conn.CloseNow()
		var cbErr callbackError
		switch {
		case err == nil:
			return w.final, nil
		case errors.As(err, &cbErr):
			return nil, cbErr.err
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, errDone):
			return w.final, nil
		}
		if delivered {
			failures = 0
		} else {
			failures++
		}
		lastErr = err
	}
}

// reconnectWait is the pause before connection attempt failures+1.
func (c *Client) reconnectWait(err error, failures int) time.Duration {
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
		return min(apiErr.RetryAfter, c.maxRetryWait)
	}
	return c.backoff(failures - 1)
}

// permanent reports whether a failed handshake cannot succeed by retrying.
func permanent(err error) bool {
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	s := apiErr.Status
	return s >= 400 && s < 500 && s != http.StatusTooManyRequests && s != http.StatusRequestTimeout
}

// dial opens the job's WebSocket, from the start (snapshot) or after w.last.
func (w *watcher) dial(ctx context.Context) (*websocket.Conn, error) {
	c := w.c
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path += "/ws/" + url.PathEscape(w.id)
	q := url.Values{}
	if w.start {
		q.Set("after_seq", strconv.FormatInt(w.last, 10))
	}
	h := http.Header{}
	if c.userAgent != "" {
		h.Set("User-Agent", c.userAgent)
	}
	if c.key != "" {
		if c.tickets {
			t, err := c.Ticket(ctx, w.id)
			if err != nil {
				return nil, err
			}
			q.Set("ticket", t.Ticket)
		} else {
			h.Set("Authorization", "Bearer "+c.key)
		}
	}
	u.RawQuery = q.Encode()
	// The handshake response's body is the connection, or was read and closed by Dial on failure.
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: h}) //nolint:bodyclose // see above
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(resp.Body)
			}
			return nil, parseAPIError(resp.StatusCode, resp.Header, body)
		}
		return nil, err
	}
	conn.SetReadLimit(maxBody)
	return conn, nil
}

// errDone ends a connection when the job has ended.
var errDone = errors.New("job ended")

// read hands the connection's new messages to fn until the job ends (nil), fn fails
// (callbackError), or the connection drops or must be replaced (another error). delivered reports
// whether fn received anything on this connection.
func (w *watcher) read(ctx context.Context, conn *websocket.Conn, fn func(Message) error) (delivered bool, err error) {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				// The server closes with 1000 right after the terminal event; if that was not
				// seen here (a WatchAfter past the end), ask whether the job has ended.
				if done, derr := w.endedAt(ctx); derr == nil && done {
					return delivered, errDone
				}
			}
			return delivered, err
		}
		if typ != websocket.MessageText {
			continue
		}
		var m Message
		if err := json.Unmarshal(data, &m); err != nil {
			return delivered, fmt.Errorf("client: watch job %s: bad message: %w", w.id, err)
		}
		switch {
		case m.Type == MessageSnapshot:
			if w.start {
				continue // not asked for; never sent with after_seq
			}
			w.start = true
		case !w.start:
			continue
		case m.Seq <= w.last:
			continue // already delivered on an earlier connection
		case m.Seq > w.last+1:
			return delivered, errReconnect // a gap: resume from the last seq delivered
		}
		w.last = m.Seq
		delivered = true
		if err := fn(m); err != nil {
			return delivered, callbackError{err}
		}
		if m.Terminal() {
			if m.Type == MessageSnapshot {
				w.final = m.Job
				return delivered, nil
			}
			job, err := w.c.Get(ctx, w.id)
			if err != nil {
				return delivered, callbackError{fmt.Errorf("client: watch job %s: it ended %s; reading it: %w", w.id, m.Status, err)}
			}
			w.final = job
			return delivered, nil
		}
	}
}

// endedAt reports whether the job has ended at or before the last seq delivered (and keeps it).
func (w *watcher) endedAt(ctx context.Context) (bool, error) {
	job, err := w.c.Get(ctx, w.id)
	if err != nil {
		return false, err
	}
	if job.Status.Terminal() && job.LastSeq <= w.last {
		w.final = job
		return true, nil
	}
	return false, nil
}

package client_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/client"
	"github.com/cao-run/cao/pkg/client/clienttest"
	"github.com/cao-run/cao/pkg/testinfra"
)

func TestMain(m *testing.M) { clienttest.Main(m) }

func newClient(t *testing.T, url string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(url, opts...)
	require.NoError(t, err)
	return c
}

// watchAll follows a job and returns the messages fn received and the final job.
func watchAll(ctx context.Context, t *testing.T, c *client.Client, id string) ([]client.Message, *client.Job) {
	t.Helper()
	var msgs []client.Message
	job, err := c.Watch(ctx, id, func(m client.Message) error {
		msgs = append(msgs, m)
		return nil
	})
	require.NoError(t, err)
	return msgs, job
}

// requireContiguous checks that msgs start with a snapshot and then carry every seq after it once,
// in order, and that the last one ends the job.
func requireContiguous(t *testing.T, msgs []client.Message) {
	t.Helper()
	require.NotEmpty(t, msgs)
	require.Equal(t, client.MessageSnapshot, msgs[0].Type)
	require.NotNil(t, msgs[0].Job)
	for i := 1; i < len(msgs); i++ {
		require.Equal(t, msgs[i-1].Seq+1, msgs[i].Seq, "message %d: seqs must follow each other: %+v", i, msgs)
		require.NotEqual(t, client.MessageSnapshot, msgs[i].Type)
	}
	require.True(t, msgs[len(msgs)-1].Terminal(), "the last message ends the job: %+v", msgs[len(msgs)-1])
}

// sameEvents compares the messages after a snapshot with the events the REST API lists after it.
func sameEvents(t *testing.T, want []client.Message, got []client.Message) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		w, g := want[i], got[i]
		require.Equal(t, []any{w.Seq, w.Type, w.Step, w.Status, w.Run}, []any{g.Seq, g.Type, g.Step, g.Status, g.Run}, "event %d", i)
		require.True(t, w.At.Equal(g.At), "event %d at", i)
	}
}

func TestStartGetWatchEventsList(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	ctx := testinfra.Context(t, 60*time.Second)
	c := newClient(t, dev.URL)

	features, err := c.Features(ctx)
	require.NoError(t, err)
	names := map[string]client.Feature{}
	for _, f := range features {
		names[f.Name] = f
	}
	require.Contains(t, names, "greet")
	require.Contains(t, names, "slow")
	greet := names["greet"]
	require.Len(t, greet.Steps, 2)
	require.Equal(t, "hello", greet.Steps[0].Name)
	require.Equal(t, []string{"hello"}, greet.Steps[1].Needs)
	require.Equal(t, "mock", greet.Steps[0].ServiceKind)
	require.Contains(t, string(greet.InputSchema), `"required"`)

	// Start with an Idempotency-Key: a repeat answers the same job.
	req := client.StartRequest{Feature: "greet", Input: map[string]any{"name": "Ada"}, IdempotencyKey: "greet-ada-" + uuid.NewString()}
	started, err := c.Start(ctx, req)
	require.NoError(t, err)
	require.NoError(t, uuid.Validate(started.JobID))
	require.Equal(t, client.JobPending, started.Status)
	require.False(t, started.Replayed)
	require.True(t, strings.HasSuffix(started.MonitorURL, "/ws/"+started.JobID), started.MonitorURL)
	again, err := c.Start(ctx, req)
	require.NoError(t, err)
	require.Equal(t, started.JobID, again.JobID)
	require.True(t, again.Replayed)

	msgs, final := watchAll(ctx, t, c, started.JobID)
	requireContiguous(t, msgs)
	require.Equal(t, client.JobCompleted, final.Status)
	require.Equal(t, started.JobID, final.ID)
	require.Equal(t, "default", final.Tenant)
	require.Equal(t, "greet", final.FeatureName)
	require.JSONEq(t, `{"name":"Ada"}`, string(final.InputData))
	require.NotNil(t, final.FinishedAt)
	shout := final.Step("shout")
	require.NotNil(t, shout)
	require.Equal(t, client.StepSucceeded, shout.Status)
	require.JSONEq(t, `{"loud":"hello Ada!"}`, string(shout.Output))
	require.Equal(t, []string{"hello"}, shout.Needs)
	require.Len(t, shout.AttemptHistory, 1)
	require.Equal(t, 1, shout.Run)

	got, err := c.Get(ctx, started.JobID)
	require.NoError(t, err)
	require.Equal(t, final.Status, got.Status)
	require.Equal(t, final.LastSeq, got.LastSeq)
	require.Equal(t, msgs[len(msgs)-1].Seq, got.LastSeq)

	// The live picture built with Apply agrees with the job read afterwards.
	var live client.Job
	for _, m := range msgs {
		live.Apply(m)
	}
	require.Equal(t, got.Status, live.Status)
	for _, s := range got.Steps {
		require.Equal(t, s.Status, live.Step(s.Name).Status, s.Name)
		require.Equal(t, s.Attempts, live.Step(s.Name).Attempts, s.Name)
	}

	// Events: every seq from 1, the same as what Watch delivered after its snapshot.
	evs, err := c.Events(ctx, started.JobID, 0)
	require.NoError(t, err)
	for i, e := range evs {
		require.Equal(t, int64(i+1), e.Seq)
		require.Equal(t, started.JobID, e.JobID)
	}
	snap := msgs[0].Seq
	sameEvents(t, msgs[1:], evs[snap:])
	tail, err := c.Events(ctx, started.JobID, got.LastSeq-1)
	require.NoError(t, err)
	require.Len(t, tail, 1)
	require.Equal(t, "job", tail[0].Type)
	require.Equal(t, "COMPLETED", tail[0].Status)

	// Four more jobs (one with a raw JSON input), then the list, page by page and with All.
	ids := map[string]bool{started.JobID: true}
	for i := range 4 {
		in := any(map[string]any{"name": "n" + string(rune('a'+i))})
		if i == 0 {
			in = json.RawMessage(`{"name":"raw"}`)
		}
		s, err := c.Start(ctx, client.StartRequest{Feature: "greet", Input: in})
		require.NoError(t, err)
		ids[s.JobID] = true
	}
	page, err := c.List(ctx, client.ListOptions{Feature: "greet", Limit: 2})
	require.NoError(t, err)
	require.Len(t, page.Jobs, 2)
	require.NotEmpty(t, page.NextCursor)
	var paged []string
	for opts := (client.ListOptions{Feature: "greet", Limit: 2}); ; {
		p, err := c.List(ctx, opts)
		require.NoError(t, err)
		for _, j := range p.Jobs {
			paged = append(paged, j.ID)
			require.Empty(t, j.Steps, "the list has no steps")
		}
		if p.NextCursor == "" {
			break
		}
		opts.Cursor = p.NextCursor
	}
	var all []client.Job
	for j, err := range c.All(ctx, client.ListOptions{Feature: "greet", Limit: 2}) {
		require.NoError(t, err)
		all = append(all, j)
	}
	require.Len(t, all, 5)
	seen := map[string]bool{}
	for i, j := range all {
		require.True(t, ids[j.ID], j.ID)
		require.False(t, seen[j.ID], "All repeats %s", j.ID)
		seen[j.ID] = true
		require.Equal(t, paged[i], j.ID)
		if i > 0 {
			require.False(t, j.CreatedAt.After(all[i-1].CreatedAt), "newest first")
		}
	}
	// Stopping early stops the iteration.
	n := 0
	for _, err := range c.All(ctx, client.ListOptions{Limit: 1}) {
		require.NoError(t, err)
		n++
		if n == 3 {
			break
		}
	}
	require.Equal(t, 3, n)
	empty, err := c.List(ctx, client.ListOptions{Feature: "slow"})
	require.NoError(t, err)
	require.Empty(t, empty.Jobs)
	require.Empty(t, empty.NextCursor)
	testinfra.Eventually(t, 20*time.Second, func() bool {
		p, err := c.List(ctx, client.ListOptions{Feature: "greet", Status: client.JobCompleted})
		require.NoError(t, err)
		return len(p.Jobs) == 5
	}, "all five greet jobs complete")
}

func TestAPIErrors(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	ctx := testinfra.Context(t, 60*time.Second)
	c := newClient(t, dev.URL)

	require.NoError(t, c.Health(ctx))
	require.Equal(t, dev.URL, c.BaseURL())

	apiErr := func(err error) *client.APIError {
		t.Helper()
		var e *client.APIError
		require.ErrorAs(t, err, &e)
		return e
	}

	_, err := c.Get(ctx, uuid.NewString())
	e := apiErr(err)
	require.Equal(t, http.StatusNotFound, e.Status)
	require.Equal(t, client.CodeJobNotFound, e.Code)
	require.Equal(t, "job not found", e.Message)
	require.True(t, client.IsNotFound(err))
	require.True(t, client.IsCode(err, client.CodeJobNotFound))
	require.Equal(t, "404 job_not_found: job not found", err.Error())

	_, err = c.Get(ctx, "not-a-uuid")
	e = apiErr(err)
	require.Equal(t, http.StatusBadRequest, e.Status)
	require.Equal(t, client.CodeInvalidJobID, e.Code)

	_, err = c.Start(ctx, client.StartRequest{Feature: "greet", Input: map[string]any{"name": ""}})
	e = apiErr(err)
	require.Equal(t, http.StatusUnprocessableEntity, e.Status)
	require.Equal(t, client.CodeInvalidInput, e.Code)
	require.NotNil(t, e.Details)
	fields := e.FieldErrors()
	require.Len(t, fields, 1)
	require.Equal(t, "name", fields[0].Field)
	require.NotEmpty(t, fields[0].Message)

	_, err = c.Start(ctx, client.StartRequest{Feature: "greet", Input: map[string]any{}})
	require.Equal(t, "name", apiErr(err).FieldErrors()[0].Field)

	_, err = c.Start(ctx, client.StartRequest{Feature: "no_such_feature"})
	e = apiErr(err)
	require.Equal(t, http.StatusNotFound, e.Status)
	require.Equal(t, client.CodeFeatureNotFound, e.Code)
	require.Nil(t, e.FieldErrors())

	_, err = c.List(ctx, client.ListOptions{Limit: 1000})
	require.Equal(t, client.CodeInvalidQuery, apiErr(err).Code)
	_, err = c.List(ctx, client.ListOptions{Status: "DONE"})
	require.Equal(t, client.CodeInvalidQuery, apiErr(err).Code)

	// Errors found before any request.
	_, err = c.Start(ctx, client.StartRequest{Feature: "greet", Input: json.RawMessage(`{"name":`)})
	require.ErrorContains(t, err, "not valid JSON")
	_, err = c.Get(ctx, "")
	require.ErrorContains(t, err, "job id is empty")
	_, err = client.New("localhost:8000")
	require.Error(t, err)

	// Watching a job that does not exist fails at once with the handshake's answer.
	_, err = c.Watch(ctx, uuid.NewString(), func(client.Message) error { return nil })
	e = apiErr(err)
	require.Equal(t, http.StatusNotFound, e.Status)
	require.Equal(t, client.CodeJobNotFound, e.Code)

	// Conflicts on a completed job.
	s, err := c.Start(ctx, client.StartRequest{Feature: "greet", Input: map[string]any{"name": "x"}})
	require.NoError(t, err)
	_, job := watchAll(ctx, t, c, s.JobID)
	require.Equal(t, client.JobCompleted, job.Status)
	_, err = c.Cancel(ctx, s.JobID)
	e = apiErr(err)
	require.Equal(t, http.StatusConflict, e.Status)
	require.Equal(t, client.CodeAlreadyTerminal, e.Code)
	_, err = c.Resume(ctx, s.JobID, client.ResumeRequest{})
	e = apiErr(err)
	require.Equal(t, http.StatusConflict, e.Status)
	require.Equal(t, client.CodeNotResumable, e.Code)

	// An error returned by fn ends the watch with that error.
	stop := errors.New("seen enough")
	_, err = c.Watch(ctx, s.JobID, func(client.Message) error { return stop })
	require.ErrorIs(t, err, stop)
}

func TestCancelResumeFail(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	ctx := testinfra.Context(t, 60*time.Second)
	c := newClient(t, dev.URL)

	s, err := c.Start(ctx, client.StartRequest{Feature: "slow"})
	require.NoError(t, err)
	testinfra.Eventually(t, 10*time.Second, func() bool {
		j, err := c.Get(ctx, s.JobID)
		require.NoError(t, err)
		return j.Status == client.JobRunning
	}, "the slow job runs")
	cancelled, err := c.Cancel(ctx, s.JobID)
	require.NoError(t, err)
	require.Equal(t, s.JobID, cancelled.JobID)
	require.Equal(t, client.JobCancelled, cancelled.Status)
	msgs, job := watchAll(ctx, t, c, s.JobID)
	require.Len(t, msgs, 1, "a snapshot of an ended job is all there is")
	require.True(t, msgs[0].Terminal())
	require.Equal(t, client.JobCancelled, job.Status)
	require.Equal(t, client.StepCancelled, job.Step("s6").Status)

	resumed, err := c.Resume(ctx, s.JobID, client.ResumeRequest{})
	require.NoError(t, err)
	require.Equal(t, s.JobID, resumed.JobID)
	require.Equal(t, client.JobPending, resumed.Status)
	msgs, job = watchAll(ctx, t, c, s.JobID)
	requireContiguous(t, msgs)
	require.Equal(t, client.JobCompleted, job.Status)
	require.JSONEq(t, `{"done":true}`, string(job.Step("s6").Output))
	require.Equal(t, 2, job.Step("s6").Run)

	// A job that fails: watch says FAILED, resume from a step runs it again (and it fails again).
	b, err := c.Start(ctx, client.StartRequest{Feature: "broken"})
	require.NoError(t, err)
	msgs, job = watchAll(ctx, t, c, b.JobID)
	requireContiguous(t, msgs)
	require.Equal(t, client.JobFailed, job.Status)
	require.NotEmpty(t, job.Error)
	fails := job.Step("fails")
	require.Equal(t, client.StepFailed, fails.Status)
	require.Equal(t, 2, fails.Attempts)
	require.NotEmpty(t, fails.Error)
	require.Len(t, fails.AttemptHistory, 2)
	require.NotEqual(t, client.StepSucceeded, job.Step("after").Status)

	_, err = c.Resume(ctx, b.JobID, client.ResumeRequest{FromStep: "nope"})
	require.True(t, client.IsCode(err, client.CodeStepNotFound), "%v", err)
	_, err = c.Resume(ctx, b.JobID, client.ResumeRequest{FromStep: "ok", Input: map[string]any{"again": true}})
	require.NoError(t, err)
	msgs, job = watchAll(ctx, t, c, b.JobID)
	requireContiguous(t, msgs)
	require.Equal(t, client.JobFailed, job.Status)
	require.Equal(t, 2, job.Step("ok").Run)
	require.JSONEq(t, `{"again":true}`, string(job.InputData))
}

// proxy forwards TCP connections to an API and can drop the WebSocket ones on demand.
type proxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	conns   map[net.Conn]bool // client side of each open connection: is it a WebSocket
	wsCount atomic.Int64
	wg      sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.close(false)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(in)
		}()
	}
}

func (p *proxy) forward(in net.Conn) {
	defer func() { _ = in.Close() }()
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer func() { _ = out.Close() }()
	br := bufio.NewReader(in)
	head, _ := br.Peek(len("GET /ws/"))
	ws := string(head) == "GET /ws/"
	if ws {
		p.wsCount.Add(1)
	}
	p.mu.Lock()
	p.conns[in] = ws
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, in)
		p.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, br); _ = out.Close(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); _ = in.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// drop cuts every open WebSocket connection, as a network failure would.
func (p *proxy) drop() { p.close(true) }

// close closes the open connections (only the WebSocket ones when wsOnly); forward closes the
// other side.
func (p *proxy) close(wsOnly bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for in, ws := range p.conns {
		if ws || !wsOnly {
			_ = in.Close()
		}
	}
}

func TestWatchReconnectsWithoutLosingOrRepeating(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	ctx := testinfra.Context(t, 60*time.Second)
	px := newProxy(t, dev.Addr)
	c := newClient(t, px.URL())

	s, err := c.Start(ctx, client.StartRequest{Feature: "slow"})
	require.NoError(t, err)
	drops := map[int]bool{2: true, 5: true, 9: true, 14: true}
	var msgs []client.Message
	job, err := c.Watch(ctx, s.JobID, func(m client.Message) error {
		msgs = append(msgs, m)
		if drops[len(msgs)] {
			px.drop()
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, client.JobCompleted, job.Status)
	require.Greater(t, len(msgs), 14, "the slow job has enough events to be cut four times")
	requireContiguous(t, msgs)
	require.GreaterOrEqual(t, px.wsCount.Load(), int64(5), "one connection, then one after each drop")

	evs, err := c.Events(ctx, s.JobID, 0)
	require.NoError(t, err)
	sameEvents(t, msgs[1:], evs[msgs[0].Seq:])

	// WatchAfter replays from the event log without a snapshot; past the end it returns at once.
	var replay []client.Message
	job, err = c.WatchAfter(ctx, s.JobID, 0, func(m client.Message) error {
		replay = append(replay, m)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, client.JobCompleted, job.Status)
	sameEvents(t, evs, replay)
	job, err = c.WatchAfter(ctx, s.JobID, job.LastSeq, func(m client.Message) error {
		t.Errorf("nothing after the end: %+v", m)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, client.JobCompleted, job.Status)
}

// recorder remembers the requests a client sends.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	next http.RoundTripper
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Clone(context.Background()))
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func (r *recorder) wsRequests() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*http.Request
	for _, req := range r.reqs {
		if strings.HasPrefix(req.URL.Path, "/ws/") {
			out = append(out, req)
		}
	}
	return out
}

func TestAPIKeysAndTickets(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{Env: []string{"CAO_API_KEYS=acme:sekrit-acme,other:sekrit-other"}})
	ctx := testinfra.Context(t, 60*time.Second)

	anon := newClient(t, dev.URL)
	_, err := anon.Start(ctx, client.StartRequest{Feature: "greet", Input: map[string]any{"name": "x"}})
	require.True(t, client.IsCode(err, client.CodeUnauthorized), "%v", err)

	rec := &recorder{next: http.DefaultTransport}
	acme := newClient(t, dev.URL, client.WithAPIKey("sekrit-acme"), client.WithHTTPClient(&http.Client{Transport: rec}))
	s, err := acme.Start(ctx, client.StartRequest{Feature: "greet", Input: map[string]any{"name": "x"}})
	require.NoError(t, err)
	msgs, job := watchAll(ctx, t, acme, s.JobID)
	requireContiguous(t, msgs)
	require.Equal(t, client.JobCompleted, job.Status)
	require.Equal(t, "acme", job.Tenant)
	ws := rec.wsRequests()
	require.Len(t, ws, 1)
	require.Equal(t, "Bearer sekrit-acme", ws[0].Header.Get("Authorization"))
	require.Empty(t, ws[0].URL.Query().Get("ticket"))

	// Without a key, and with another tenant's key, the job's WebSocket is refused at once.
	_, err = anon.Watch(ctx, s.JobID, func(client.Message) error { return nil })
	require.True(t, client.IsCode(err, client.CodeUnauthorized), "%v", err)
	other := newClient(t, dev.URL, client.WithAPIKey("sekrit-other"))
	_, err = other.Watch(ctx, s.JobID, func(client.Message) error { return nil })
	require.True(t, client.IsCode(err, client.CodeJobNotFound), "%v", err)
	_, err = other.Ticket(ctx, s.JobID)
	require.True(t, client.IsCode(err, client.CodeJobNotFound), "%v", err)

	tk, err := acme.Ticket(ctx, s.JobID)
	require.NoError(t, err)
	require.NotEmpty(t, tk.Ticket)
	require.WithinDuration(t, time.Now().Add(time.Minute), tk.ExpiresAt, 10*time.Second)

	// With tickets: no key on the handshake, a fresh ticket in the query.
	rec2 := &recorder{next: http.DefaultTransport}
	tickets := newClient(t, dev.URL, client.WithAPIKey("sekrit-acme"), client.WithWebSocketTickets(),
		client.WithHTTPClient(&http.Client{Transport: rec2}))
	s2, err := tickets.Start(ctx, client.StartRequest{Feature: "slow"})
	require.NoError(t, err)
	msgs, job = watchAll(ctx, t, tickets, s2.JobID)
	requireContiguous(t, msgs)
	require.Equal(t, client.JobCompleted, job.Status)
	ws = rec2.wsRequests()
	require.Len(t, ws, 1)
	require.Empty(t, ws[0].Header.Get("Authorization"))
	require.NotEmpty(t, ws[0].URL.Query().Get("ticket"))
}

// TestRetries uses a stub server: the real API does not answer 503 on demand.
func TestRetries(t *testing.T) {
	var attempts atomic.Int64
	var mode atomic.Value
	jobJSON := `{"success":true,"job":{"id":"7b0c1c9e-0f7a-4a57-9d0e-2f8f3f1c1a11","tenant":"default","feature_name":"f","status":"RUNNING","input_data":null,"output":null,"error":null,"last_seq":3,"created_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z","started_at":null,"finished_at":null,"steps":[]}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := attempts.Add(1)
		unavailable := func(retryAfter string) {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"success":false,"error":{"code":"service_unavailable","message":"the database is unavailable; retry later"}}`)
		}
		switch mode.Load().(string) {
		case "once-503":
			if n == 1 {
				unavailable("1")
				return
			}
		case "always-503":
			unavailable("")
			return
		case "long-503":
			unavailable("5")
			return
		case "once-429":
			if n == 1 {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
				_, _ = io.WriteString(w, `{"success":false,"error":{"code":"rate_limited","message":"slow down"}}`)
				return
			}
		case "proxy-502":
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>bad gateway</html>")
			return
		}
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"success":true,"job_id":"7b0c1c9e-0f7a-4a57-9d0e-2f8f3f1c1a11","status":"PENDING"}`)
			return
		}
		_, _ = io.WriteString(w, jobJSON)
	}))
	t.Cleanup(srv.Close)
	ctx := testinfra.Context(t, 30*time.Second)
	c := newClient(t, srv.URL)
	id := "7b0c1c9e-0f7a-4a57-9d0e-2f8f3f1c1a11"
	reset := func(m string) { mode.Store(m); attempts.Store(0) }

	// GET: retried after the Retry-After the 503 asked for.
	reset("once-503")
	t0 := time.Now()
	job, err := c.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, client.JobRunning, job.Status)
	require.Equal(t, int64(2), attempts.Load())
	require.GreaterOrEqual(t, time.Since(t0), time.Second)

	// POST /jobs without an Idempotency-Key: a 503 is not retried (the job may exist).
	reset("once-503")
	_, err = c.Start(ctx, client.StartRequest{Feature: "f"})
	var e *client.APIError
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusServiceUnavailable, e.Status)
	require.Equal(t, client.CodeUnavailable, e.Code)
	require.Equal(t, time.Second, e.RetryAfter)
	require.Equal(t, int64(1), attempts.Load())

	// With a key it is.
	reset("once-503")
	st, err := c.Start(ctx, client.StartRequest{Feature: "f", IdempotencyKey: "k"})
	require.NoError(t, err)
	require.Equal(t, id, st.JobID)
	require.Equal(t, int64(2), attempts.Load())

	// 429 is answered before anything happens: retried even without a key.
	reset("once-429")
	_, err = c.Start(ctx, client.StartRequest{Feature: "f"})
	require.NoError(t, err)
	require.Equal(t, int64(2), attempts.Load())

	// Bounded: 1 + WithRetries attempts, then the last answer.
	reset("always-503")
	c2 := newClient(t, srv.URL, client.WithRetries(2))
	_, err = c2.Get(ctx, id)
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusServiceUnavailable, e.Status)
	require.Equal(t, int64(3), attempts.Load())

	// A Retry-After longer than WithMaxRetryWait is returned at once.
	reset("long-503")
	c3 := newClient(t, srv.URL, client.WithMaxRetryWait(time.Second))
	_, err = c3.Get(ctx, id)
	require.ErrorAs(t, err, &e)
	require.Equal(t, 5*time.Second, e.RetryAfter)
	require.Equal(t, int64(1), attempts.Load())

	// An answer that is not an envelope still is an APIError.
	reset("proxy-502")
	_, err = c.Resume(ctx, id, client.ResumeRequest{})
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusBadGateway, e.Status)
	require.Empty(t, e.Code)
	require.Equal(t, "<html>bad gateway</html>", e.Message)
	require.Equal(t, int64(1), attempts.Load(), "resume is not retried on 502")

	// Connection refused: GET is retried, then the transport error is returned.
	closed := "http://" + testinfra.RefusedAddr(t)
	_, err = newClient(t, closed).Get(ctx, id)
	require.ErrorContains(t, err, "connection refused")
	require.ErrorContains(t, newClient(t, closed).Health(ctx), "connection refused")
	var apiErr *client.APIError
	require.False(t, errors.As(err, &apiErr))
}

package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
)

// codeUpgradeRequired answers a plain HTTP request to /ws/{id}.
const codeUpgradeRequired = "upgrade_required"

// wsConfig holds the WebSocket monitor's tuning; tests shorten the intervals.
type wsConfig struct {
	// stream tunes the ordered stream of each watched job (events.StreamConfig; zero: its defaults).
	stream events.StreamConfig
	// pingInterval is how often each client is pinged; pongTimeout is how long it has to answer.
	pingInterval, pongTimeout time.Duration
	// writeTimeout bounds one message write; a client that does not take a message in this time is
	// dropped as slow.
	writeTimeout time.Duration
}

func defaultWSConfig() wsConfig {
	return wsConfig{
		pingInterval: 20 * time.Second,
		pongTimeout:  10 * time.Second,
		writeTimeout: 10 * time.Second,
	}
}

// jobStreams is the ordered, gap-filled stream of every job watched in this process
// (events.Streams implements it).
type jobStreams interface {
	Follow(ctx context.Context, jobID string) (*events.Follower, error)
	Stop(ctx context.Context) error
}

// wsHub serves /ws/{job_id}: the HTTP side of the WebSocket monitor (origin policy, upgrade, the
// per-tenant cap, the snapshot or replay a connection starts with, and one writer per connection).
// The events themselves come from the job's stream (jobStreams): in seq order, without gaps, one
// bounded queue per connection.
type wsHub struct {
	s       *Server
	cfg     wsConfig
	streams jobStreams

	origins   []string // scheme://host patterns for websocket.AcceptOptions.OriginPatterns
	anyOrigin bool     // CAO_ALLOWED_ORIGINS contains "*"

	ctx      context.Context // cancelled when stop finished
	cancel   context.CancelFunc
	closing  chan struct{} // closed by stop: every client closes with 1001
	stopOnce sync.Once
	wg       sync.WaitGroup // connection handlers and their ping goroutines

	mu       sync.Mutex
	stopping bool
	open     map[string]int // open connections per tenant (CAO_WS_MAX_PER_TENANT)
}

// admit counts a new connection of tenant, or reports false when the tenant is at its cap.
func (h *wsHub) admit(tenant string) bool {
	limit := h.s.d.Settings.WSMaxPerTenant
	h.mu.Lock()
	defer h.mu.Unlock()
	if limit > 0 && h.open[tenant] >= limit {
		return false
	}
	h.open[tenant]++
	return true
}

// release forgets a connection admitted for tenant.
func (h *wsHub) release(tenant string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.open[tenant]--; h.open[tenant] <= 0 {
		delete(h.open, tenant)
	}
}

// enter counts a connection handler for stop to wait for, or reports false once stop was called.
func (h *wsHub) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopping {
		return false
	}
	h.wg.Add(1) // under h.mu with stopping checked, so stop's Wait never races this Add
	return true
}

func newWSHub(s *Server, cfg wsConfig) *wsHub {
	ctx, cancel := context.WithCancel(context.Background())
	h := &wsHub{
		s: s, cfg: cfg, ctx: ctx, cancel: cancel,
		closing: make(chan struct{}), open: map[string]int{},
	}
	stream := cfg.stream
	stream.NotFound, stream.Logger = orchestrator.ErrJobNotFound, s.log
	h.streams = events.NewStreams(s.d.Events, s.d.Jobs, stream)
	h.origins, h.anyOrigin = originPatterns(s.d.Settings.AllowedOrigins, s.d.Settings.PublicURL)
	return h
}

// snapshotMsg is the first message of a connection without after_seq.
type snapshotMsg struct {
	Type string `json:"type"`
	Seq  int64  `json:"seq"`
	Job  any    `json:"job"`
}

// serve upgrades GET /ws/{job_id}[?after_seq=N] and streams the job: a snapshot (or, with after_seq,
// a replay of the event log), then every change in seq order, and closes with 1000 after the event
// that makes the job terminal.
func (h *wsHub) serve(c *gin.Context) {
	id, ok := jobID(c)
	if !ok {
		return
	}
	after, hasAfter := int64(0), false
	if a, set := c.GetQuery("after_seq"); set {
		n, err := strconv.ParseInt(a, 10, 64)
		if err != nil || n < 0 {
			abort(c, http.StatusBadRequest, codeInvalidQuery, "after_seq must be a non-negative integer", nil)
			return
		}
		after, hasAfter = n, true
	}
	if !h.originAllowed(c.Request) {
		abort(c, http.StatusForbidden, codeOriginNotAllowed, "this Origin is not allowed; add it to CAO_ALLOWED_ORIGINS", nil)
		return
	}
	if !isUpgrade(c.Request) {
		c.Header("Upgrade", "websocket")
		abort(c, http.StatusUpgradeRequired, codeUpgradeRequired, "this endpoint speaks WebSocket only", nil)
		return
	}
	if msg := handshakeProblem(c.Request); msg != "" {
		c.Header("Sec-WebSocket-Version", "13")
		abort(c, http.StatusBadRequest, codeBadRequest, msg, nil)
		return
	}

	ctx := c.Request.Context()
	scope := scopeOf(c)
	tenant := callerOf(c).Tenant
	if !h.admit(tenant) {
		h.s.d.Metrics.RateLimited.WithLabelValues("websocket").Inc()
		tooMany(c, 5*time.Second, fmt.Sprintf("tenant %q already holds %d WebSocket connections on this server", tenant, h.s.d.Settings.WSMaxPerTenant))
		return
	}
	defer h.release(tenant)
	if !h.enter() {
		shuttingDown(c)
		return
	}
	defer h.wg.Done()
	f, err := h.streams.Follow(ctx, id)
	switch {
	case errors.Is(err, events.ErrStopping):
		shuttingDown(c)
		return
	case err != nil:
		h.s.fail(c, err)
		return
	}
	defer f.Close()

	// Read the starting point only now that the client follows the job's stream (see Follow).
	var st startPoint
	if hasAfter {
		st, err = h.replayStart(ctx, scope, id, after, f)
	} else {
		st, err = h.snapshotStart(ctx, scope, id, f)
	}
	if err != nil {
		h.s.fail(c, err)
		return
	}

	// An upgraded connection is exempt from CAO_HTTP_READ_TIMEOUT and the write timeout: a hijacked
	// connection may keep the server's deadlines (http.Hijacker), so clear them before the upgrade.
	ClearDeadlines(c.Writer)
	conn, err := websocket.Accept(c.Writer, c.Request, &websocket.AcceptOptions{
		OriginPatterns:     h.origins,
		InsecureSkipVerify: h.anyOrigin, // CAO_ALLOWED_ORIGINS=* deliberately allows every origin
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept answered the request
	}
	m := h.s.d.Metrics
	m.WSClients.Inc()
	defer m.WSClients.Dec()
	conn.SetReadLimit(1024) // clients send nothing but control frames
	// The request context must not be used after the hijack; the connection lives until stop.
	wc := &wsConn{h: h, conn: conn, f: f, jobID: id}
	wc.readCtx = conn.CloseRead(h.ctx)
	wc.run(st)
}

// shuttingDown refuses a connection during shutdown.
func shuttingDown(c *gin.Context) {
	c.Header("Retry-After", "5")
	abort(c, http.StatusServiceUnavailable, codeUnavailable, "the server is shutting down; reconnect", nil)
}

// startPoint is what a connection sends before going live.
type startPoint struct {
	frames   [][]byte // the snapshot, or the first page of the replay
	terminal bool     // close with 1000 right after frames
	more     bool     // the replay has more pages than frames
}

// snapshotStart is the snapshot of the job (the object of GET /api/v1/jobs/{id}) at its last_seq,
// where it places f.
func (h *wsHub) snapshotStart(ctx context.Context, scope store.Scope, id string, f *events.Follower) (startPoint, error) {
	view, err := h.s.d.Jobs.GetJob(ctx, scope, id)
	if err != nil {
		return startPoint{}, err
	}
	b, err := json.Marshal(snapshotMsg{Type: "snapshot", Seq: view.Job.LastSeq, Job: jobObject(view)})
	if err != nil {
		return startPoint{}, err
	}
	f.SetLast(view.Job.LastSeq)
	return startPoint{frames: [][]byte{b}, terminal: view.Job.Status.Terminal()}, nil
}

// replayStart is the first page of the events after after_seq, from where f goes on.
func (h *wsHub) replayStart(ctx context.Context, scope store.Scope, id string, after int64, f *events.Follower) (startPoint, error) {
	job, err := h.s.d.Jobs.Job(ctx, scope, id)
	if err != nil {
		return startPoint{}, err
	}
	f.SetLast(after)
	frames, more, err := f.Page(ctx)
	if err != nil {
		return startPoint{}, err
	}
	st := startPoint{more: more}
	for _, fr := range frames {
		st.frames = append(st.frames, fr.Data)
		st.terminal = fr.Terminal
	}
	// A client that already has the terminal event gets nothing more: close at once.
	st.terminal = st.terminal || (len(frames) == 0 && job.Status.Terminal() && job.LastSeq <= after)
	return st, nil
}

// stop closes every connection with 1001 (going away), waits for their handlers, and stops the
// streams, or gives up when ctx ends. Safe to call twice.
func (h *wsHub) stop(ctx context.Context) error {
	h.stopOnce.Do(func() {
		h.mu.Lock()
		h.stopping = true
		h.mu.Unlock()
		close(h.closing)
	})
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
		err := h.streams.Stop(ctx)
		h.cancel()
		return err
	case <-ctx.Done():
		// Unblock the stragglers' writes and database reads; the streams give up at once too, and
		// their error is ctx's.
		h.cancel()
		_ = h.streams.Stop(ctx)
		return ctx.Err()
	}
}

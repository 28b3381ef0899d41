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
	"github.com/cao-run/cao/pkg/store"
)

// codeUpgradeRequired answers a plain HTTP request to /ws/{id}.
const codeUpgradeRequired = "upgrade_required"

// wsConfig holds the WebSocket monitor's tuning; tests shorten the intervals.
type wsConfig struct {
	// clientQueue bounds the messages waiting for one client; a client that falls this far behind
	// is closed with 1013 so that it never slows the others. One delivery of any size is accepted
	// when nothing else waits (a page read from the log after a burst).
	clientQueue int
	// topicBuffer is the events.Hub buffer of one job's subscription in this process. A burst larger
	// than this is not lost: the topic resubscribes and reads the gap from the event log.
	topicBuffer int
	// pingInterval is how often each client is pinged; pongTimeout is how long it has to answer.
	pingInterval, pongTimeout time.Duration
	// writeTimeout bounds one message write; a client that does not take a message in this time is
	// dropped as slow.
	writeTimeout time.Duration
	// pollInterval is how often a topic compares the job's last_seq with what it delivered, so that
	// events whose publish was lost (process died after commit, Redis reconnecting) still arrive.
	pollInterval time.Duration
	// pageSize is how many events one read of the event log returns.
	pageSize int
}

func defaultWSConfig() wsConfig {
	return wsConfig{
		clientQueue:  256,
		topicBuffer:  256,
		pingInterval: 20 * time.Second,
		pongTimeout:  10 * time.Second,
		writeTimeout: 10 * time.Second,
		pollInterval: 3 * time.Second,
		pageSize:     1000,
	}
}

// wsHub serves /ws/{job_id}. Per process it keeps one topic per watched job: a single events.Hub
// subscription (itself one Redis subscription per process) whose messages are put in seq order,
// gap-filled from the event log, encoded once and offered to each local client's bounded queue
// without ever blocking. Each client owns its position (last seq sent) and drops what it already has,
// which makes the switch from the snapshot or replay to live gap-free and duplicate-free.
type wsHub struct {
	s   *Server
	cfg wsConfig

	origins   []string // scheme://host patterns for websocket.AcceptOptions.OriginPatterns
	anyOrigin bool     // CAO_ALLOWED_ORIGINS contains "*"

	ctx      context.Context // cancelled when stop finished
	cancel   context.CancelFunc
	closing  chan struct{} // closed by stop: every client closes with 1001
	stopOnce sync.Once
	wg       sync.WaitGroup // connection handlers, their ping goroutines and the topics

	pollOnce sync.Once // starts pollLoop with the first topic

	mu       sync.Mutex
	stopping bool
	topics   map[string]*topic
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

func newWSHub(s *Server) *wsHub {
	ctx, cancel := context.WithCancel(context.Background())
	h := &wsHub{
		s: s, cfg: defaultWSConfig(), ctx: ctx, cancel: cancel,
		closing: make(chan struct{}), topics: map[string]*topic{}, open: map[string]int{},
	}
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
	cl := newWSClient(h.cfg.clientQueue)
	leave, err := h.join(ctx, id, cl)
	switch {
	case errors.Is(err, errStopping):
		c.Header("Retry-After", "5")
		abort(c, http.StatusServiceUnavailable, codeUnavailable, "the server is shutting down; reconnect", nil)
		return
	case err != nil:
		h.s.fail(c, err)
		return
	}
	defer leave()

	// Read the starting point only now that the client is on its topic (see join).
	var st startPoint
	if hasAfter {
		st, err = h.replayStart(ctx, scope, id, after)
	} else {
		st, err = h.snapshotStart(ctx, scope, id)
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
	wc := &wsConn{h: h, conn: conn, cl: cl, jobID: id, last: st.last}
	wc.readCtx = conn.CloseRead(h.ctx)
	wc.run(st)
}

// startPoint is what a connection sends before going live, and where that leaves the client.
type startPoint struct {
	frames   [][]byte // the snapshot, or the first page of the replay
	last     int64    // seq the client is at after frames
	terminal bool     // close with 1000 right after frames
	more     bool     // the replay has more pages than frames
}

// snapshotStart is the snapshot of the job (the object of GET /api/v1/jobs/{id}) at its last_seq.
func (h *wsHub) snapshotStart(ctx context.Context, scope store.Scope, id string) (startPoint, error) {
	view, err := h.s.d.Jobs.GetJob(ctx, scope, id)
	if err != nil {
		return startPoint{}, err
	}
	b, err := json.Marshal(snapshotMsg{Type: "snapshot", Seq: view.Job.LastSeq, Job: jobObject(view)})
	if err != nil {
		return startPoint{}, err
	}
	return startPoint{frames: [][]byte{b}, last: view.Job.LastSeq, terminal: view.Job.Status.Terminal()}, nil
}

// replayStart is the first page of the events after after_seq.
func (h *wsHub) replayStart(ctx context.Context, scope store.Scope, id string, after int64) (startPoint, error) {
	job, err := h.s.d.Jobs.Job(ctx, scope, id)
	if err != nil {
		return startPoint{}, err
	}
	evs, err := h.s.d.Jobs.EventLog(ctx, id, after, h.cfg.pageSize)
	if err != nil {
		return startPoint{}, err
	}
	st := startPoint{last: after, more: len(evs) == h.cfg.pageSize}
	for _, e := range evs {
		w, err := encodeWire(events.FromEvent(e))
		if err != nil {
			return startPoint{}, err
		}
		st.frames = append(st.frames, w.data)
		st.last, st.terminal = w.seq, w.terminal
	}
	// A client that already has the terminal event gets nothing more: close at once.
	st.terminal = st.terminal || (len(evs) == 0 && job.Status.Terminal() && job.LastSeq <= after)
	return st, nil
}

// stop closes every connection with 1001 (going away) and waits for their handlers, or ctx. Safe to
// call twice.
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
		h.cancel()
		return nil
	case <-ctx.Done():
		h.cancel() // unblocks writes and database reads of the stragglers
		return ctx.Err()
	}
}

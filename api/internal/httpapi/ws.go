package httpapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/orchestrator"
)

// codeOriginNotAllowed answers a WebSocket upgrade from a browser origin outside CAO_ALLOWED_ORIGINS.
const codeOriginNotAllowed = "origin_not_allowed"

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
}

func newWSHub(s *Server) *wsHub {
	ctx, cancel := context.WithCancel(context.Background())
	h := &wsHub{
		s: s, cfg: defaultWSConfig(), ctx: ctx, cancel: cancel,
		closing: make(chan struct{}), topics: map[string]*topic{},
	}
	h.origins, h.anyOrigin = originPatterns(s.d.Settings.AllowedOrigins, s.d.Settings.PublicURL)
	return h
}

// originPatterns turns CAO_ALLOWED_ORIGINS (full origins such as https://app.example.com) and the
// public URL into scheme://host patterns, so that an http origin does not pass for an https one.
func originPatterns(allowed []string, publicURL string) (patterns []string, anyOrigin bool) {
	for _, o := range append(slices.Clone(allowed), publicURL) {
		if o == "*" {
			anyOrigin = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Host == "" {
			continue
		}
		patterns = append(patterns, strings.ToLower(u.Scheme+"://"+u.Host))
	}
	return patterns, anyOrigin
}

// originAllowed applies the same rule as websocket.Accept (no Origin: not a browser; same host as the
// request; or a pattern match) so that a refusal gets the JSON error envelope before any database work.
func (h *wsHub) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || h.anyOrigin {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	target := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, p := range h.origins {
		if ok, _ := path.Match(p, target); ok {
			return true
		}
	}
	return false
}

// isUpgrade reports whether the request asks for a WebSocket.
func isUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// wire is one encoded message, shared by every client of the job.
type wire struct {
	seq      int64
	data     []byte
	terminal bool
}

// delivery is what one topic hands to its clients at once: the messages of one publish (or of the
// publishes that arrived together), or one page read from the event log. One delivery is shared by
// every client of the job.
type delivery struct{ msgs []wire }

func encodeWire(m events.Message) (wire, error) {
	b, err := json.Marshal(m)
	return wire{seq: m.Seq, data: b, terminal: m.Terminal()}, err
}

// wsClient is one connection's queue. The topic only ever offers to it (never blocks); when more
// than limit messages wait the client is marked slow and its handler closes it.
type wsClient struct {
	q       chan *delivery // capacity limit: a delivery holds at least one message
	pending atomic.Int64   // messages in q
	limit   int64
	slow    atomic.Bool
	slowCh  chan struct{}
}

func newWSClient(limit int) *wsClient {
	return &wsClient{q: make(chan *delivery, limit), limit: int64(limit), slowCh: make(chan struct{})}
}

func (c *wsClient) offer(d *delivery) {
	if c.slow.Load() {
		return
	}
	n := int64(len(d.msgs))
	if p := c.pending.Add(n); p > c.limit && p != n {
		c.markSlow()
		return
	}
	select {
	case c.q <- d:
	default:
		c.markSlow()
	}
}

// take is the writer's side of offer.
func (c *wsClient) take(d *delivery) { c.pending.Add(-int64(len(d.msgs))) }

func (c *wsClient) markSlow() {
	if c.slow.CompareAndSwap(false, true) {
		close(c.slowCh)
	}
}

// topic is one job's live stream in this process.
type topic struct {
	h     *wsHub
	jobID string
	sub   *events.Subscription // taken when the topic is created, before anyone reads the database
	done  chan struct{}        // closed when the last client left
	refs  int                  // guarded by h.mu

	// ready is closed once head0 (the job's last_seq read right after subscribing) is known, or
	// failed is set. Every client reads its own starting point after ready, so no client ever starts
	// before the topic: whatever the topic delivers extends what each client has, without a gap.
	ready  chan struct{}
	head0  int64
	failed error

	// polled receives the job's last_seq from the hub's poll of every watched job.
	polled chan int64

	mu      sync.Mutex
	clients map[*wsClient]struct{}
}

// errStopping refuses new connections during shutdown.
var errStopping = errors.New("websocket: server stopping")

// join registers c on the job's topic, creating it (and its hub subscription) if needed, and returns
// once the topic knows its starting point. The caller reads the job only after join: every event
// committed after that read then reaches c. An unknown job fails with orchestrator.ErrJobNotFound.
func (h *wsHub) join(ctx context.Context, jobID string, c *wsClient) (leave func(), err error) {
	for {
		t, created, err := h.register(jobID, c)
		if err != nil {
			return nil, err
		}
		leave := func() { h.unregister(t, c) }
		if created {
			job, err := h.s.d.Jobs.Job(ctx, jobID)
			if err != nil {
				h.mu.Lock()
				if h.topics[jobID] == t {
					delete(h.topics, jobID) // the next client creates a fresh topic
				}
				h.mu.Unlock()
				t.failed = err
				close(t.ready)
				t.sub.Close() // run never starts for this topic
				leave()
				return nil, err
			}
			t.head0 = job.LastSeq
			close(t.ready)
			h.wg.Add(1) // this client's count is held, so the counter is not zero here
			go t.run()
			return leave, nil
		}
		select {
		case <-t.ready:
		case <-ctx.Done():
			leave()
			return nil, ctx.Err()
		}
		if t.failed == nil {
			return leave, nil
		}
		leave()
		if errors.Is(t.failed, orchestrator.ErrJobNotFound) {
			return nil, t.failed
		}
		// The creator's read failed for its own reason (its request was cancelled, say): try anew.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// register adds c to the job's topic, creating the topic and its subscription if needed.
func (h *wsHub) register(jobID string, c *wsClient) (t *topic, created bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopping {
		return nil, false, errStopping
	}
	t = h.topics[jobID]
	if t == nil {
		t = &topic{
			h: h, jobID: jobID, sub: h.s.d.Events.Subscribe(jobID, h.cfg.topicBuffer),
			done: make(chan struct{}), ready: make(chan struct{}), clients: map[*wsClient]struct{}{},
			polled: make(chan int64, 1),
		}
		h.topics[jobID] = t
		created = true
		h.pollOnce.Do(func() { go h.pollLoop() })
	}
	t.refs++
	h.wg.Add(1) // under h.mu with stopping checked, so stop's Wait never races this Add
	t.mu.Lock()
	t.clients[c] = struct{}{}
	t.mu.Unlock()
	return t, created, nil
}

func (h *wsHub) unregister(t *topic, c *wsClient) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t.mu.Lock()
	delete(t.clients, c)
	t.mu.Unlock()
	if t.refs--; t.refs == 0 {
		if h.topics[t.jobID] == t {
			delete(h.topics, t.jobID)
		}
		close(t.done)
	}
	h.wg.Done()
}

// run orders the job's live messages and fills gaps from the event log, until the last client leaves.
func (t *topic) run() {
	defer t.h.wg.Done()
	sub := t.sub
	defer func() { sub.Close() }()
	head := t.head0
	subC := sub.C
	polled := head // last_seq seen by the previous poll
	batch := make([]events.Message, 0, 64)
	for {
		select {
		case <-t.done:
			return
		case m, ok := <-subC:
			if !ok {
				if !sub.Overflowed() {
					// The hub stopped (process shutting down): the poll still delivers from the log.
					subC = nil
					continue
				}
				// A burst overflowed the buffer: subscribe again first, then read what was missed.
				sub = t.h.s.d.Events.Subscribe(t.jobID, t.h.cfg.topicBuffer)
				subC = sub.C
				t.forward(t.readLog(&head))
				continue
			}
			batch = append(batch[:0], m)
		drain:
			for len(batch) < cap(batch) {
				select {
				case m, ok := <-subC:
					if !ok {
						break drain
					}
					batch = append(batch, m)
				default:
					break drain
				}
			}
			t.forward(t.order(batch, &head))
		case seq := <-t.polled:
			// Only events committed a whole interval ago and still missing count as lost; newer ones
			// are most likely still on their way through pub/sub.
			if polled > head {
				t.forward(t.readLog(&head))
			}
			polled = seq
		}
	}
}

// pollLoop reads, every pollInterval, the last_seq of every job watched in this process in one
// query (per 1,000 jobs), and hands each topic its job's value: a topic reads the event log only
// when events are missing, so watchers cost the database one query per interval, not one per job.
func (h *wsHub) pollLoop() {
	tick := time.NewTicker(h.cfg.pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-h.closing:
			return
		case <-h.ctx.Done():
			return
		case <-tick.C:
		}
		h.mu.Lock()
		topics := make(map[string]*topic, len(h.topics))
		for id, t := range h.topics {
			topics[id] = t
		}
		h.mu.Unlock()
		ids := slices.Collect(maps.Keys(topics))
		for chunk := range slices.Chunk(ids, 1000) {
			seqs, err := h.s.d.Jobs.LastSeqs(h.ctx, chunk)
			if err != nil {
				continue // the next tick tries again
			}
			for id, seq := range seqs {
				t := topics[id]
				select { // keep only the newest value
				case <-t.polled:
				default:
				}
				select {
				case t.polled <- seq:
				default:
				}
			}
		}
	}
}

// order returns the encoded messages that extend head without a gap, reading the log when a message
// is ahead of head (lost or reordered publish). Messages at or below head are duplicates.
func (t *topic) order(batch []events.Message, head *int64) []wire {
	slices.SortStableFunc(batch, func(a, b events.Message) int { return cmp.Compare(a.Seq, b.Seq) })
	var out []wire
	for _, m := range batch {
		if m.Seq <= *head {
			continue
		}
		if m.Seq > *head+1 {
			out = append(out, t.readLog(head)...)
			if m.Seq != *head+1 {
				// Not in the log yet, or already read: the next poll settles it.
				continue
			}
		}
		w, err := encodeWire(m)
		if err != nil {
			continue
		}
		out = append(out, w)
		*head = m.Seq
	}
	return out
}

// readLog returns the encoded events after head from the event log and advances head.
func (t *topic) readLog(head *int64) []wire {
	var out []wire
	for {
		evs, err := t.h.s.d.Jobs.EventLog(t.h.ctx, t.jobID, *head, t.h.cfg.pageSize)
		if err != nil {
			t.h.s.log.Warn("websocket: read event log", "job_id", t.jobID, "err", err)
			return out
		}
		for _, e := range evs {
			if e.Seq != *head+1 {
				return out
			}
			w, err := encodeWire(events.FromEvent(e))
			if err != nil {
				return out
			}
			out = append(out, w)
			*head = e.Seq
		}
		if len(evs) < t.h.cfg.pageSize {
			return out
		}
	}
}

// forward offers the messages to every client of the job as one delivery.
func (t *topic) forward(msgs []wire) {
	if len(msgs) == 0 {
		return
	}
	d := &delivery{msgs: msgs}
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.clients {
		c.offer(d)
	}
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

	ctx := c.Request.Context()
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
		st, err = h.replayStart(ctx, id, after)
	} else {
		st, err = h.snapshotStart(ctx, id)
	}
	if err != nil {
		h.s.fail(c, err)
		return
	}

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
func (h *wsHub) snapshotStart(ctx context.Context, id string) (startPoint, error) {
	view, err := h.s.d.Jobs.GetJob(ctx, id)
	if err != nil {
		return startPoint{}, err
	}
	b, err := json.Marshal(snapshotMsg{Type: "snapshot", Seq: view.Job.LastSeq, Job: JobJSON(view)})
	if err != nil {
		return startPoint{}, err
	}
	return startPoint{frames: [][]byte{b}, last: view.Job.LastSeq, terminal: view.Job.Status.Terminal()}, nil
}

// replayStart is the first page of the events after after_seq.
func (h *wsHub) replayStart(ctx context.Context, id string, after int64) (startPoint, error) {
	job, err := h.s.d.Jobs.Job(ctx, id)
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

// wsConn is one accepted connection: it writes in the goroutine of the HTTP handler.
type wsConn struct {
	h       *wsHub
	conn    *websocket.Conn
	cl      *wsClient
	jobID   string
	last    int64           // seq of the last message sent
	readCtx context.Context // done when the peer closed or the connection broke
	pinging atomic.Bool
}

// errClosed means the connection was closed while sending; the handler just returns.
var errClosed = errors.New("websocket closed")

func (w *wsConn) run(st startPoint) {
	defer w.conn.CloseNow()
	for _, b := range st.frames {
		if w.write(b) != nil {
			return
		}
	}
	terminal := st.terminal
	if st.more {
		term, err := w.replay()
		if err != nil {
			return
		}
		terminal = term
	}
	if terminal {
		w.close(websocket.StatusNormalClosure, "job finished")
		return
	}
	ping := time.NewTicker(w.h.cfg.pingInterval)
	defer ping.Stop()
	for {
		// A slow client is closed even if its queue still holds deliveries.
		if w.cl.slow.Load() {
			w.closeSlow()
			return
		}
		select {
		case <-w.readCtx.Done():
			return
		case <-w.h.closing:
			w.close(websocket.StatusGoingAway, "server shutting down; reconnect with after_seq")
			return
		case <-w.cl.slowCh:
			w.closeSlow()
			return
		case <-ping.C:
			w.ping()
		case d := <-w.cl.q:
			w.cl.take(d)
			done, err := w.deliver(d)
			if err != nil || done {
				return
			}
		}
	}
}

// deliver sends the messages the client does not have yet; done means the job ended and the
// connection was closed.
func (w *wsConn) deliver(d *delivery) (done bool, err error) {
	for _, m := range d.msgs {
		if m.seq <= w.last {
			continue
		}
		if m.seq > w.last+1 {
			// This client read the database before its topic knew where it stood: fill from the log.
			term, err := w.replay()
			if err != nil {
				return false, err
			}
			if term {
				w.close(websocket.StatusNormalClosure, "job finished")
				return true, nil
			}
			if m.seq != w.last+1 {
				continue
			}
		}
		if err := w.write(m.data); err != nil {
			return false, err
		}
		w.last = m.seq
		if m.terminal {
			w.close(websocket.StatusNormalClosure, "job finished")
			return true, nil
		}
	}
	return false, nil
}

// replay sends every event after w.last from the event log; terminal reports whether the last one
// ends the job (a terminal event followed by more, after a resume, does not).
func (w *wsConn) replay() (terminal bool, err error) {
	for {
		evs, err := w.h.s.d.Jobs.Events(w.h.ctx, w.jobID, w.last, w.h.cfg.pageSize)
		if err != nil {
			w.h.s.log.Warn("websocket: replay", "job_id", w.jobID, "err", err)
			w.close(websocket.StatusTryAgainLater, "event log unavailable; reconnect with after_seq")
			return false, err
		}
		for _, e := range evs {
			if e.Seq <= w.last {
				continue
			}
			m, err := encodeWire(events.FromEvent(e))
			if err != nil {
				return false, err
			}
			if err := w.write(m.data); err != nil {
				return false, err
			}
			w.last, terminal = m.seq, m.terminal
		}
		if len(evs) < w.h.cfg.pageSize {
			return terminal, nil
		}
	}
}

func (w *wsConn) write(b []byte) error {
	ctx, cancel := context.WithTimeout(w.h.ctx, w.h.cfg.writeTimeout)
	defer cancel()
	if err := w.conn.Write(ctx, websocket.MessageText, b); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			// The peer did not take one message in writeTimeout; the library already dropped it.
			w.h.s.d.Metrics.WSSlowClosed.Inc()
		}
		return errClosed
	}
	return nil
}

func (w *wsConn) close(code websocket.StatusCode, reason string) {
	_ = w.conn.Close(code, reason)
}

func (w *wsConn) closeSlow() {
	w.h.s.d.Metrics.WSSlowClosed.Inc()
	w.close(websocket.StatusTryAgainLater, "too slow; reconnect with after_seq")
}

// ping checks liveness without blocking the writer: the pong is read by CloseRead's goroutine.
func (w *wsConn) ping() {
	if !w.pinging.CompareAndSwap(false, true) {
		return
	}
	w.h.wg.Add(1)
	go func() {
		defer w.h.wg.Done()
		defer w.pinging.Store(false)
		ctx, cancel := context.WithTimeout(w.h.ctx, w.h.cfg.pongTimeout)
		defer cancel()
		if err := w.conn.Ping(ctx); err != nil {
			_ = w.conn.CloseNow() // no pong: the peer is gone; the writer sees readCtx done
		}
	}()
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

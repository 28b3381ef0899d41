package httpapi

// This file is one watched job's stream in this process: its hub subscription, put in seq order and
// gap-filled from the event log, and the poll of every watched job's last_seq.

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/store"
)

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
			// The topic is shared by every client of the job, whatever its tenant: each client
			// reads its own starting point in its own scope before anything is sent to it.
			job, err := h.s.d.Jobs.Job(ctx, store.AllTenants, jobID)
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

package events

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/startstop"
)

// Hub holds one Redis subscription per process, to every job's events (Channel), and fans messages
// out to local subscribers by job. It holds the subscription only while a local subscriber (a
// watched job) exists, and for hubLinger after the last one leaves: an API replica nobody watches
// through does not read the fleet's events, which took 13 % of its CPU while it took jobs (session
// 14). Delivery to a subscriber never blocks the hub: a subscriber whose buffer is full is marked
// overflowed and its channel closed, and it must resynchronise from the event log.
type Hub struct {
	rdb     redis.UniversalClient
	channel string
	linger  time.Duration

	// life runs the reader of the Redis subscription. startMu makes its start and stop one at a time;
	// base, set by Start, is the context the reader runs under (nil: not started). closeErr is what
	// closing the subscription returned, set by the reader before it ends.
	life     startstop.Loop
	startMu  sync.Mutex
	base     context.Context
	closeErr error
	retry    *time.Timer // a subscription that failed is tried again (subscribeRetry)

	mu    sync.Mutex
	byJob map[string]map[*Subscription]struct{}
	idle  *time.Timer // set while no subscriber is left: it closes the subscription after the linger
}

// How the hub holds its Redis subscription: how long it keeps it without a subscriber, how long a
// Subscribe waits for Redis to confirm it, and how soon a subscription that failed is tried again.
const (
	hubLinger        = 30 * time.Second
	subscribeTimeout = 2 * time.Second
	subscribeRetry   = time.Second
)

// Subscription receives messages; C is closed when the subscription ends or overflows.
type Subscription struct {
	C          chan Message
	hub        *Hub
	jobID      string
	overflowed bool
	closed     bool
}

// Overflowed reports whether messages were dropped because the subscriber was too slow.
func (s *Subscription) Overflowed() bool {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.overflowed
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.hub.removeLocked(s)
}

// NewHub returns a hub reading Channel(rdb) from rdb; call Start before subscribing.
func NewHub(rdb redis.UniversalClient) *Hub {
	return &Hub{
		rdb:     rdb,
		channel: Channel(rdb),
		linger:  hubLinger,
		byJob:   map[string]map[*Subscription]struct{}{},
	}
}

// Start lets the hub subscribe to its channel, which it does when the first local subscriber
// comes (Subscribe). Safe to call twice.
func (h *Hub) Start(ctx context.Context) error {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	if h.base == nil {
		h.base = context.WithoutCancel(ctx)
	}
	return nil
}

// hold makes sure the Redis subscription is held while local subscribers exist: it subscribes and
// returns once Redis confirmed, or after subscribeTimeout (a subscription that fails is tried again
// every subscribeRetry, in the background; meanwhile the subscribers' readers find the events in
// the log, as while a held subscription reconnects).
func (h *Hub) hold() {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	if h.base == nil || h.life.Running() || h.retry != nil || h.Subscribers() == 0 {
		// A pending retry (Redis did not answer) subscribes: a topic that comes meanwhile does not
		// wait for Redis again, its reader polls the log.
		return
	}
	ctx, cancel := context.WithTimeout(h.base, subscribeTimeout)
	defer cancel()
	ps := h.rdb.Subscribe(h.base, h.channel)
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		if h.retry == nil {
			h.retry = time.AfterFunc(subscribeRetry, func() {
				h.startMu.Lock()
				h.retry = nil
				h.startMu.Unlock()
				h.hold()
			})
		}
		return
	}
	h.life.Start(h.base, func(ctx context.Context) { h.closeErr = h.read(ctx, ps) })
}

// release closes the Redis subscription if no local subscriber is left.
func (h *Hub) release() {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	h.mu.Lock()
	h.idle = nil
	empty := len(h.byJob) == 0
	h.mu.Unlock()
	if h.base != nil && empty {
		_, _ = h.life.Stop(h.base)
	}
}

// read fans out every message of the subscription until ctx ends, then closes the subscription.
func (h *Hub) read(ctx context.Context, ps *redis.PubSub) error {
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return ps.Close()
		case msg, ok := <-ch:
			if !ok {
				return nil
			}
			if !h.wanted() {
				continue
			}
			msgs, err := Decode([]byte(msg.Payload))
			if err != nil {
				continue
			}
			h.deliver(msgs)
		}
	}
}

// wanted reports whether a subscriber of this process follows a job: payloads that arrive while
// none does are not even decoded.
func (h *Hub) wanted() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.byJob) > 0
}

// deliver fans the messages out to local subscribers without ever blocking on one.
func (h *Hub) deliver(msgs []Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range msgs {
		for s := range h.byJob[m.JobID] {
			h.sendLocked(s, m)
		}
	}
}

func (h *Hub) sendLocked(s *Subscription, m Message) {
	if s.closed {
		return
	}
	select {
	case s.C <- m:
	default:
		s.overflowed = true
		h.removeLocked(s)
	}
}

func (h *Hub) removeLocked(s *Subscription) {
	if s.closed {
		return
	}
	s.closed = true
	close(s.C)
	if m := h.byJob[s.jobID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(h.byJob, s.jobID)
		}
	}
	if len(h.byJob) == 0 && h.idle == nil {
		h.idle = time.AfterFunc(h.linger, h.release)
	}
}

// Subscribe returns a subscription to one job's messages with a buffer of buf messages.
func (h *Hub) Subscribe(jobID string, buf int) *Subscription {
	s := &Subscription{C: make(chan Message, buf), hub: h, jobID: jobID}
	h.mu.Lock()
	m := h.byJob[jobID]
	if m == nil {
		m = map[*Subscription]struct{}{}
		h.byJob[jobID] = m
	}
	m[s] = struct{}{}
	if h.idle != nil { // the linger counts from the last subscriber to leave, not an earlier one
		h.idle.Stop()
		h.idle = nil
	}
	h.mu.Unlock()
	h.hold()
	return s
}

// Subscribers returns the number of local subscriptions. Tests read it (here and in the API) to check
// that subscriptions are released.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.byJob {
		n += len(m)
	}
	return n
}

// Stop closes every local subscription and the Redis subscription, and waits for the reader to end
// or ctx. Safe to call twice.
func (h *Hub) Stop(ctx context.Context) error {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	h.mu.Lock()
	for _, m := range h.byJob {
		for s := range m {
			h.removeLocked(s)
		}
	}
	if h.idle != nil {
		h.idle.Stop()
		h.idle = nil
	}
	h.mu.Unlock()
	h.base = nil
	if h.retry != nil {
		h.retry.Stop()
		h.retry = nil
	}
	running, err := h.life.Stop(ctx)
	if !running || err != nil {
		return err
	}
	return h.closeErr
}

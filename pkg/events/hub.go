package events

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/startstop"
)

// Hub holds one Redis subscription per process, to every job's events (Channel), and fans messages
// out to local subscribers by job. Delivery to a subscriber never blocks the hub: a subscriber whose buffer is
// full is marked overflowed and its channel closed, and it must resynchronise from the event log.
type Hub struct {
	rdb     redis.UniversalClient
	channel string

	// life runs the reader of the Redis subscription. startMu makes Start and Stop one at a time, so
	// that two Starts cannot both subscribe; closeErr is what closing the subscription returned, set
	// by the reader before it ends.
	life     startstop.Loop
	startMu  sync.Mutex
	closeErr error

	mu    sync.Mutex
	byJob map[string]map[*Subscription]struct{}
}

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
		byJob:   map[string]map[*Subscription]struct{}{},
	}
}

// Start subscribes to the hub's channel and begins fanning out; it returns once the subscription is
// confirmed. Safe to call twice.
func (h *Hub) Start(ctx context.Context) error {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	if h.life.Running() {
		return nil
	}
	// The subscription outlives the start request; Stop closes it.
	ps := h.rdb.Subscribe(context.WithoutCancel(ctx), h.channel)
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return fmt.Errorf("events: subscribe %s: %w", h.channel, err)
	}
	h.life.Start(ctx, func(ctx context.Context) { h.closeErr = h.read(ctx, ps) })
	return nil
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
}

// Subscribe returns a subscription to one job's messages with a buffer of buf messages.
func (h *Hub) Subscribe(jobID string, buf int) *Subscription {
	s := &Subscription{C: make(chan Message, buf), hub: h, jobID: jobID}
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.byJob[jobID]
	if m == nil {
		m = map[*Subscription]struct{}{}
		h.byJob[jobID] = m
	}
	m[s] = struct{}{}
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
	h.mu.Unlock()
	running, err := h.life.Stop(ctx)
	if !running || err != nil {
		return err
	}
	return h.closeErr
}

package events

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/startstop"
)

// Hub holds one Redis subscription per process and fans messages out to local subscribers, by job or
// to every-job listeners. Delivery to a subscriber never blocks the hub: a subscriber whose buffer is
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
	all   map[*Subscription]struct{}
}

// Subscription receives messages; C is closed when the subscription ends or overflows.
type Subscription struct {
	C     chan Message
	hub   *Hub
	jobID string // empty: all jobs
	// match, for a subscription to all jobs, keeps only the payloads that contain it (the rest are
	// not even decoded when no other subscriber wants them).
	match      []byte
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
		all:     map[*Subscription]struct{}{},
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
			raw := []byte(msg.Payload)
			if !h.wanted(raw) {
				continue
			}
			msgs, err := Decode(raw)
			if err != nil {
				continue
			}
			h.deliver(raw, msgs)
		}
	}
}

// wanted reports whether a subscriber may want the messages of payload raw: one follows a job, or
// one follows all jobs and raw has what it matches. A worker, which follows only cancellations,
// then decodes a few of the fleet's payloads instead of every one.
func (h *Hub) wanted(raw []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.byJob) > 0 {
		return true
	}
	for s := range h.all {
		if s.matches(raw) {
			return true
		}
	}
	return false
}

func (s *Subscription) matches(raw []byte) bool {
	return s.match == nil || bytes.Contains(raw, s.match)
}

// deliver fans the messages of payload raw out to local subscribers without ever blocking on one.
func (h *Hub) deliver(raw []byte, msgs []Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Which subscribers to all jobs want this payload is decided once, not once per message: a
	// payload may join the events of many changes.
	var all []*Subscription
	for s := range h.all {
		if s.matches(raw) {
			all = append(all, s)
		}
	}
	for _, m := range msgs {
		for s := range h.byJob[m.JobID] {
			h.sendLocked(s, m)
		}
		for _, s := range all {
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
	if s.jobID == "" {
		delete(h.all, s)
		return
	}
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

// SubscribeAll returns a subscription to every job's messages with a buffer of buf messages, from
// the payloads that contain match (nil: every payload); a payload holds the events of one committed
// change. The subscriber still checks each message: match only spares it (and the hub) the payloads
// that cannot concern it.
func (h *Hub) SubscribeAll(buf int, match []byte) *Subscription {
	s := &Subscription{C: make(chan Message, buf), hub: h, match: match}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.all[s] = struct{}{}
	return s
}

// Subscribers returns the number of local subscriptions. Tests read it (here and in the API) to check
// that subscriptions are released.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.all)
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
	for s := range h.all {
		h.removeLocked(s)
	}
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

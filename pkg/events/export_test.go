package events

import "time"

// Channel returns the pub/sub channel the hub reads.
func (h *Hub) Channel() string { return h.channel }

// Channel returns the pub/sub channel the publisher sends on.
func (p *RedisPublisher) Channel() string { return p.channel }

// Topics returns the number of jobs with a topic in this process.
func (s *Streams) Topics() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.topics)
}

// SetLinger sets how long the hub keeps its Redis subscription after the last subscriber left.
func (h *Hub) SetLinger(d time.Duration) { h.linger = d }

// Subscribed reports whether the hub holds its Redis subscription.
func (h *Hub) Subscribed() bool { return h.life.Running() }

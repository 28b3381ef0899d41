package events

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

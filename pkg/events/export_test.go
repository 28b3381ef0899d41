package events

// Topics returns the number of jobs with a topic in this process.
func (s *Streams) Topics() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.topics)
}

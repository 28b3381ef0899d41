package health

// Rounds returns the number of probe rounds completed since the checker was built.
func (c *Checker) Rounds() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rounds
}

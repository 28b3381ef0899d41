package dispatch

// Fixed returns how many tasks were re-enqueued so far.
func (r *Reconciler) Fixed() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fixed
}

// Enqueued returns how many tasks this relay has moved.
func (r *Relay) Enqueued() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.enqueued
}

// StolenKey is stolenKey, for the tests that let a stolen task's mark expire.
func StolenKey(queue, id string) string { return stolenKey(queue, id) }

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

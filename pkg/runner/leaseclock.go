package runner

import (
	"sync"
	"time"
)

// leaseClock tracks, by this process's clock, whether the attempt's leases are surely still held: each
// counts from a moment just before it was last taken or renewed.
type leaseClock struct {
	mu              sync.Mutex
	stepOK, semOK   time.Time
	stepTTL, semTTL time.Duration
	sem             bool // a semaphore lease is held (the service has a max_concurrency)
}

// valid reports whether both leases are still held at now.
func (c *leaseClock) valid(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return now.Sub(c.stepOK) < c.stepTTL && (!c.sem || now.Sub(c.semOK) < c.semTTL)
}

// renewed records a successful renewal of the step lease (sem=false) or the service slot (sem=true)
// requested at t.
func (c *leaseClock) renewed(t time.Time, sem bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sem {
		c.semOK = t
	} else {
		c.stepOK = t
	}
}

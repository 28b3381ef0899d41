package runner

import (
	"sync"
	"time"

	"github.com/cao-run/cao/pkg/limiter"
)

// leaseClock tracks, by this process's clock, whether the attempt's leases are surely still held: each
// counts from a moment just before it was last taken or renewed. The semaphore leases (the service
// slot and the slots within the service an admission holds) share one TTL and are renewed together,
// so one time stands for them all: the earliest.
type leaseClock struct {
	mu              sync.Mutex
	stepOK, semOK   time.Time
	stepTTL, semTTL time.Duration
	sem             bool // semaphore leases are held (the service has a max_concurrency)
}

// newLeaseClock returns the clock of a step whose lease counts from stepOK and which holds the
// semaphore leases held (each counting from its RequestedAt) of TTL semTTL.
func newLeaseClock(stepOK time.Time, stepTTL time.Duration, held []limiter.Lease, semTTL time.Duration) *leaseClock {
	c := &leaseClock{stepOK: stepOK, stepTTL: stepTTL, semTTL: semTTL, sem: len(held) > 0}
	for i, l := range held {
		if i == 0 || l.RequestedAt.Before(c.semOK) {
			c.semOK = l.RequestedAt
		}
	}
	return c
}

// valid reports whether every lease is still held at now.
func (c *leaseClock) valid(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return now.Sub(c.stepOK) < c.stepTTL && (!c.sem || now.Sub(c.semOK) < c.semTTL)
}

// renewed records a successful renewal of the step lease (sem=false) or of every semaphore lease
// (sem=true) requested at t.
func (c *leaseClock) renewed(t time.Time, sem bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sem {
		c.semOK = t
	} else {
		c.stepOK = t
	}
}

// Package limiter shares scarce capacity of external APIs across every worker of the fleet through
// Redis: a Semaphore caps concurrent calls with expiring, fenced leases and FIFO fairness, a
// RateLimiter caps requests per time window, and Budgets cap a service's requests and units of cost
// (tokens) per window over several budgets at once.
//
// All decisions run in Lua scripts against the Redis server clock (TIME), so workers with skewed
// clocks agree. The scripts avoid anything miniredis lacks, so the embedded mode can use them too.
package limiter

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ErrFull means the semaphore has no free slot for this caller now; it is an outcome, not a failure.
var ErrFull = errors.New("limiter: semaphore full")

// ErrLeaseLost means a renew or release targeted a lease that is no longer held (it expired and was
// reclaimed, or was already released).
var ErrLeaseLost = errors.New("limiter: lease lost")

const (
	defaultPrefix    = "cao:"
	defaultWaiterTTL = 3 * time.Second
	// fenceTTL keeps a semaphore's fencing counter after its last acquire. Tokens stay increasing even
	// when the counter expires, because the script never issues a token below the server time in µs.
	fenceTTL = 24 * time.Hour
)

// Config holds the optional settings of a Semaphore, RateLimiter or Budgets; the zero value uses the defaults.
type Config struct {
	// Prefix starts every Redis key the limiter writes. Default "cao:".
	Prefix string
	// WaiterTTL is how long a waiter keeps its place in a semaphore queue without calling Acquire again;
	// callers must poll more often than this (a WaitRoom polls every 250ms). Zero or negative means
	// the default, 3s: a waiter whose process died holds up the ones behind it at most this long.
	WaiterTTL time.Duration
	// Now is this process's clock, which stamps Lease.RequestedAt. Default time.Now.
	Now func() time.Time
}

// WithDefaults returns a copy of c with the zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if c.WaiterTTL <= 0 {
		c.WaiterTTL = defaultWaiterTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// millis formats d as whole milliseconds for a script argument, rounding up so that a positive
// duration never becomes zero.
func millis(d time.Duration) string {
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++
	}
	return strconv.FormatInt(int64(ms), 10)
}

// replyInt reads element i of a script reply, which the scripts send as integers or decimal strings
// (strings keep µs timestamps exact whatever the Lua number formatting of the server).
func replyInt(reply []any, i int) (int64, error) {
	if i >= len(reply) {
		return 0, fmt.Errorf("script reply has %d elements, want more than %d", len(reply), i)
	}
	switch v := reply[i].(type) {
	case int64:
		return v, nil
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("script reply element %d: %w", i, err)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("script reply element %d has type %T", i, v)
	}
}

// replyInts reads the first n elements of a script reply as integers.
func replyInts(res any, n int) ([]int64, error) {
	reply, ok := res.([]any)
	if !ok {
		return nil, fmt.Errorf("script reply has type %T, want an array", res)
	}
	out := make([]int64, n)
	for i := range out {
		v, err := replyInt(reply, i)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

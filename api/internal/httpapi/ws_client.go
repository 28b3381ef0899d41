package httpapi

// This file is a client's bounded queue of encoded messages.

import (
	"encoding/json"
	"sync/atomic"

	"github.com/cao-run/cao/pkg/events"
)

// wire is one encoded message, shared by every client of the job.
type wire struct {
	seq      int64
	data     []byte
	terminal bool
}

// delivery is what one topic hands to its clients at once: the messages of one publish (or of the
// publishes that arrived together), or one page read from the event log. One delivery is shared by
// every client of the job.
type delivery struct{ msgs []wire }

func encodeWire(m events.Message) (wire, error) {
	b, err := json.Marshal(m)
	return wire{seq: m.Seq, data: b, terminal: m.Terminal()}, err
}

// wsClient is one connection's queue. The topic only ever offers to it (never blocks); when more
// than limit messages wait the client is marked slow and its handler closes it.
type wsClient struct {
	q       chan *delivery // capacity limit: a delivery holds at least one message
	pending atomic.Int64   // messages in q
	limit   int64
	slow    atomic.Bool
	slowCh  chan struct{}
}

func newWSClient(limit int) *wsClient {
	return &wsClient{q: make(chan *delivery, limit), limit: int64(limit), slowCh: make(chan struct{})}
}

func (c *wsClient) offer(d *delivery) {
	if c.slow.Load() {
		return
	}
	n := int64(len(d.msgs))
	if p := c.pending.Add(n); p > c.limit && p != n {
		c.markSlow()
		return
	}
	select {
	case c.q <- d:
	default:
		c.markSlow()
	}
}

// take is the writer's side of offer.
func (c *wsClient) take(d *delivery) { c.pending.Add(-int64(len(d.msgs))) }

func (c *wsClient) markSlow() {
	if c.slow.CompareAndSwap(false, true) {
		close(c.slowCh)
	}
}

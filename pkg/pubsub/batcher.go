package pubsub

import "sync"

// Batcher hands items to send in the order they were added, joining the items added while an
// earlier send is on its way into one call: a process that publishes many small messages at once
// sends one message per round trip instead of one per item. At most one send runs at a time; it
// runs on a goroutine of its own, started when items are waiting and none is running, so Add never
// blocks. The zero value is not usable: use NewBatcher.
type Batcher[T any] struct {
	send  func([]T)
	limit int

	mu      sync.Mutex
	queue   []T
	running bool
}

// NewBatcher returns a batcher that calls send with up to limit items at a time (limit <= 0: no
// bound).
func NewBatcher[T any](limit int, send func([]T)) *Batcher[T] {
	return &Batcher[T]{send: send, limit: limit}
}

// Add queues items for the next send.
func (b *Batcher[T]) Add(items ...T) {
	if len(items) == 0 {
		return
	}
	b.mu.Lock()
	b.queue = append(b.queue, items...)
	start := !b.running
	b.running = true
	b.mu.Unlock()
	if start {
		go b.loop()
	}
}

// loop sends what is queued, a batch at a time, until nothing is.
func (b *Batcher[T]) loop() {
	for {
		b.mu.Lock()
		n := len(b.queue)
		if b.limit > 0 {
			n = min(n, b.limit)
		}
		if n == 0 {
			b.queue = nil
			b.running = false
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		b.send(batch)
	}
}

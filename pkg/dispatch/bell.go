package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
)

// Ring says that a task was just put in its queue to run now. A ring of a task that was enqueued
// carries the task whole, so a worker that takes the task out of Asynq (Steal) can run it without
// reading it back; a ring of a task that was moved to its queue (a parked step handed out) carries
// only its queue and id.
type Ring struct {
	Queue   string
	ID      string
	Type    string
	Payload []byte
	// At is when the task was enqueued, in µs since the epoch (the ringing process's clock).
	At int64
	// Open marks a ring passed on by its owner, which had no free handler (Bell.PassOn): any worker
	// may answer it. It is not in the message: passed-on rings have a channel of their own.
	Open bool
}

// A Bell rings for every task Dispatch puts in a queue to run now, on one pub/sub channel of the
// deployment. An Asynq server looks at its empty queues only every so often (runner.Config.IdlePoll),
// so on an idle system a step would wait for that poll; a worker with a free handler that hears the
// ring takes the task (Steal) and starts it at once. Rings are hints: one that is lost, or that no
// worker can answer, leaves the task in its queue for the poll. Rings of tasks enqueued at the same
// time go out as one message.
type Bell struct {
	rdb    redis.UniversalClient
	rings  *pubsub.Batcher[Ring]
	passed *pubsub.Batcher[Ring] // rings passed on by their owners
	log    *slog.Logger
}

// Bounds of one message of rings: how many it joins, and how long sending it may take.
const (
	maxRings    = 256
	ringTimeout = time.Second
)

// NewBell returns the deployment's bell on rdb (nil logger: slog.Default()).
func NewBell(rdb redis.UniversalClient, log *slog.Logger) *Bell {
	if log == nil {
		log = slog.Default()
	}
	b := &Bell{rdb: rdb, log: log}
	b.rings = pubsub.NewBatcher(maxRings, func(rs []Ring) { b.send(BellChannel(rdb), rs) })
	b.passed = pubsub.NewBatcher(maxRings, func(rs []Ring) { b.send(bellPassedChannel(rdb), rs) })
	return b
}

// BellChannel is the pub/sub channel of the deployment's bell.
func BellChannel(rdb redis.UniversalClient) string { return pubsub.Channel(rdb, "", "bell") }

// bellPassedChannel carries the rings their owners passed on (PassOn).
func bellPassedChannel(rdb redis.UniversalClient) string {
	return pubsub.Channel(rdb, "", "bell:passed")
}

// Ring sends rings without waiting for them to be sent.
func (b *Bell) Ring(rs ...Ring) { b.rings.Add(rs...) }

// PassOn sends again, open to every worker, rings that their owner cannot answer at once (it has no
// free handler; see RingOwners), without waiting for them to be sent.
func (b *Bell) PassOn(rs ...Ring) { b.passed.Add(rs...) }

func (b *Bell) send(channel string, rs []Ring) {
	msg := encodeRings(rs)
	ctx, cancel := context.WithTimeout(context.Background(), ringTimeout)
	defer cancel()
	if err := b.rdb.Publish(ctx, channel, msg).Err(); err != nil {
		// The tasks are in their queues; they wait for the workers' next poll instead.
		b.log.Debug("ring the bell", "err", err)
	}
}

// BellListener receives the rings of a deployment.
type BellListener struct {
	ps   *redis.PubSub
	out  chan []Ring
	done chan struct{}
}

// ListenBell subscribes to the bell of rdb's deployment; rings sent from when it returns are
// received on C (rings that arrive while C is full are dropped). Close ends it.
func ListenBell(ctx context.Context, rdb redis.UniversalClient, buf int, log *slog.Logger) (*BellListener, error) {
	if log == nil {
		log = slog.Default()
	}
	passed := bellPassedChannel(rdb)
	ps := rdb.Subscribe(ctx, BellChannel(rdb), passed)
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("listen to the bell: %w", err)
	}
	l := &BellListener{ps: ps, out: make(chan []Ring, buf), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		defer close(l.out)
		for m := range ps.Channel() {
			rs, err := decodeRings(m.Payload)
			if err != nil {
				log.Debug("undecodable ring", "err", err)
				continue
			}
			if m.Channel == passed {
				for i := range rs {
					rs[i].Open = true
				}
			}
			select {
			case l.out <- rs:
			default: // the worker is busy: the poll takes these tasks
			}
		}
	}()
	return l, nil
}

// C delivers the rings, a message at a time; it is closed after Close.
func (l *BellListener) C() <-chan []Ring { return l.out }

// Close unsubscribes and waits until C is closed.
func (l *BellListener) Close() {
	_ = l.ps.Close()
	<-l.done
}

package events

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
	"github.com/cao-run/cao/pkg/store"
)

// RedisPublisher publishes events on the deployment's events channel (Channel), in the order they
// were handed to it. The events of changes committed while an earlier publish is on its way go out
// together, as one message: a process committing many changes at once sends (and every subscriber
// receives and decodes) one payload per round trip instead of one per change. The job messages that
// cancel a job go, in the same round trip, on CancelChannel too, which the workers read.
type RedisPublisher struct {
	rdb     redis.UniversalClient
	channel string
	cancels string
	log     *slog.Logger
	batch   *pubsub.Batcher[*pendingPublish]
}

// pendingPublish is the events of one Post call, or Flush's marker (no events, done set): done, when
// set, is told how the send went.
type pendingPublish struct {
	msgs []Message
	done chan error
}

// Bounds of one message: how many calls' events it joins, and how long sending it may take.
const (
	maxJoined      = 256
	publishTimeout = 2 * time.Second
)

// NewRedisPublisher returns a publisher on the given client, on Channel(rdb); log (nil:
// slog.Default()) receives the sends of Post that failed.
func NewRedisPublisher(rdb redis.UniversalClient, log *slog.Logger) *RedisPublisher {
	if log == nil {
		log = slog.Default()
	}
	p := &RedisPublisher{rdb: rdb, channel: Channel(rdb), cancels: CancelChannel(rdb), log: log}
	p.batch = pubsub.NewBatcher(maxJoined, p.send)
	return p
}

// Post queues the events to be sent after those of the earlier calls, and returns at once: what
// waits for it (a claimed step's call, the answer to a request) does not wait for a round trip to
// Redis. A send that fails is logged; the events are in the event log, where readers find them when
// they see the gap.
func (p *RedisPublisher) Post(evs []store.Event) {
	if len(evs) > 0 {
		p.batch.Add(&pendingPublish{msgs: FromEvents(evs)})
	}
}

// Flush returns once the events of every earlier call are sent, or when ctx ends first: a process
// that stops flushes, so that its last events are not left to the readers' poll of the log. Its
// error is that of the send that carried the last events posted before it, if Flush's marker went
// with them (a failed earlier send is logged).
func (p *RedisPublisher) Flush(ctx context.Context) error {
	pp := &pendingPublish{done: make(chan error, 1)}
	p.batch.Add(pp)
	select {
	case err := <-pp.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("events: publish: %w", ctx.Err())
	}
}

// send publishes the events of a batch of calls as one message and tells each call that waits how
// it went.
func (p *RedisPublisher) send(batch []*pendingPublish) {
	var msgs []Message
	for _, pp := range batch {
		msgs = append(msgs, pp.msgs...)
	}
	var err error
	if len(msgs) > 0 {
		err = p.publish(msgs)
	}
	if err != nil && slices.ContainsFunc(batch, func(pp *pendingPublish) bool { return pp.done == nil }) {
		p.log.Warn("publish events", "events", len(msgs), "err", err) // posted: nobody else hears of it
	}
	for _, pp := range batch {
		if pp.done != nil {
			pp.done <- err
		}
	}
}

func (p *RedisPublisher) publish(msgs []Message) error {
	b, err := encode(msgs)
	if err != nil {
		return fmt.Errorf("events: encode: %w", err)
	}
	var cancels []Message
	for _, m := range msgs {
		if m.Cancels() {
			cancels = append(cancels, m)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	if len(cancels) == 0 {
		if err := p.rdb.Publish(ctx, p.channel, b).Err(); err != nil {
			return fmt.Errorf("events: publish: %w", err)
		}
		return nil
	}
	c, err := encode(cancels)
	if err != nil {
		return fmt.Errorf("events: encode: %w", err)
	}
	// The cancellations first: a worker stops a cancelled job's calls as soon as it reads them.
	pipe := p.rdb.Pipeline()
	pipe.Publish(ctx, p.cancels, c)
	pipe.Publish(ctx, p.channel, b)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("events: publish: %w", err)
	}
	return nil
}

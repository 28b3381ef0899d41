package events

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
	"github.com/cao-run/cao/pkg/store"
)

// RedisPublisher publishes events on the deployment's events channel (Channel), in the order they
// were handed to it. The events of changes committed while an earlier publish is on its way go out
// together, as one message: a process committing many changes at once sends (and every subscriber
// receives and decodes) one payload per round trip instead of one per change.
type RedisPublisher struct {
	rdb     redis.UniversalClient
	channel string
	log     *slog.Logger
	batch   *pubsub.Batcher[*pendingPublish]
}

// pendingPublish is the events of one Post or Publish call; done, when set, is told how the send
// went.
type pendingPublish struct {
	msgs []Message
	done chan error
}

// Bounds of one message: how many calls' events it joins, and how long sending it may take.
const (
	maxJoined      = 256
	publishTimeout = 2 * time.Second
)

// NewRedisPublisher returns a publisher on the given client, on Channel(rdb); log (nil: none)
// receives the sends of Post that failed.
func NewRedisPublisher(rdb redis.UniversalClient, log *slog.Logger) *RedisPublisher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &RedisPublisher{rdb: rdb, channel: Channel(rdb), log: log}
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

// Publish is Post, returning once the events are sent (in one message with those of the calls
// waiting at the same time), or when ctx ends first (they may still be sent).
func (p *RedisPublisher) Publish(ctx context.Context, evs []store.Event) error {
	return p.post(ctx, FromEvents(evs))
}

// Flush returns once the events of every earlier call are sent, or when ctx ends first: a process
// that stops flushes, so that its last events are not left to the readers' poll of the log.
func (p *RedisPublisher) Flush(ctx context.Context) error {
	return p.post(ctx, nil)
}

// post queues msgs (none: a marker that is sent when everything before it is) and waits for them.
func (p *RedisPublisher) post(ctx context.Context, msgs []Message) error {
	pp := &pendingPublish{msgs: msgs, done: make(chan error, 1)}
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
	logged := false
	for _, pp := range batch {
		switch {
		case pp.done != nil:
			pp.done <- err
		case err != nil && !logged:
			logged = true
			p.log.Warn("publish events", "events", len(msgs), "err", err)
		}
	}
}

func (p *RedisPublisher) publish(msgs []Message) error {
	b, err := encode(msgs)
	if err != nil {
		return fmt.Errorf("events: encode: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	if err := p.rdb.Publish(ctx, p.channel, b).Err(); err != nil {
		return fmt.Errorf("events: publish: %w", err)
	}
	return nil
}

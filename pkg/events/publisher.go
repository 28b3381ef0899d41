package events

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
	"github.com/cao-run/cao/pkg/store"
)

// RedisPublisher publishes events on the deployment's events channel (Channel). The events of
// changes committed while an earlier publish is on its way go out together, as one message: a
// process committing many changes at once sends (and every subscriber receives and decodes) one
// payload per round trip instead of one per change. Publish still returns only once its events
// are sent, in the order of the calls.
type RedisPublisher struct {
	rdb     redis.UniversalClient
	channel string
	batch   *pubsub.Batcher[*pendingPublish]
}

// pendingPublish is one Publish call waiting for its events to be sent.
type pendingPublish struct {
	msgs []Message
	done chan error
}

// Bounds of one message: how many calls' events it joins, and how long sending it may take.
const (
	maxJoined      = 256
	publishTimeout = 2 * time.Second
)

// NewRedisPublisher returns a publisher on the given client, on Channel(rdb).
func NewRedisPublisher(rdb redis.UniversalClient) *RedisPublisher {
	p := &RedisPublisher{rdb: rdb, channel: Channel(rdb)}
	p.batch = pubsub.NewBatcher(maxJoined, p.send)
	return p
}

// Publish sends the events, in one message with those of the calls waiting at the same time. It
// returns when they are sent, or when ctx ends first (they may still be sent).
func (p *RedisPublisher) Publish(ctx context.Context, evs []store.Event) error {
	if len(evs) == 0 {
		return nil
	}
	pp := &pendingPublish{msgs: FromEvents(evs), done: make(chan error, 1)}
	p.batch.Add(pp)
	select {
	case err := <-pp.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("events: publish: %w", ctx.Err())
	}
}

// send publishes the events of a batch of calls as one message and tells each call how it went.
func (p *RedisPublisher) send(batch []*pendingPublish) {
	var msgs []Message
	for _, pp := range batch {
		msgs = append(msgs, pp.msgs...)
	}
	err := p.publish(msgs)
	for _, pp := range batch {
		pp.done <- err
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

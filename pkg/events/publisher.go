package events

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/store"
)

// RedisPublisher publishes events on the deployment's events channel (Channel).
type RedisPublisher struct {
	rdb     redis.UniversalClient
	channel string
}

// NewRedisPublisher returns a publisher on the given client, on Channel(rdb).
func NewRedisPublisher(rdb redis.UniversalClient) *RedisPublisher {
	return &RedisPublisher{rdb: rdb, channel: Channel(rdb)}
}

// Publish sends the events as one message.
func (p *RedisPublisher) Publish(ctx context.Context, evs []store.Event) error {
	if len(evs) == 0 {
		return nil
	}
	b, err := encode(FromEvents(evs))
	if err != nil {
		return fmt.Errorf("events: encode: %w", err)
	}
	if err := p.rdb.Publish(ctx, p.channel, b).Err(); err != nil {
		return fmt.Errorf("events: publish: %w", err)
	}
	return nil
}

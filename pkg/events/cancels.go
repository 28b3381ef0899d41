package events

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// CancelListener hears, on CancelChannel, the jobs that get cancelled anywhere in the fleet. A
// worker listens to it to stop its calls of a cancelled job at once; the events channel's traffic
// (every job's every event) never reaches it. A cancellation that is not heard (Redis away, a
// publisher that lost its connection) still reaches the calls through their heartbeats, which the
// cancel fences.
type CancelListener struct {
	ps   *redis.PubSub
	done chan struct{}
}

// ListenCancels subscribes to CancelChannel of rdb's deployment and calls onCancel, one at a time,
// with the id of every job cancelled from when it returns, until Close. onCancel must not block.
// The subscription survives a lost connection (go-redis subscribes again).
func ListenCancels(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger, onCancel func(jobID string)) (*CancelListener, error) {
	if log == nil {
		log = slog.Default()
	}
	ps := rdb.Subscribe(ctx, CancelChannel(rdb))
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("events: listen to cancellations: %w", err)
	}
	l := &CancelListener{ps: ps, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for m := range ps.Channel() {
			msgs, err := Decode([]byte(m.Payload))
			if err != nil {
				log.Debug("undecodable cancellation", "err", err)
				continue
			}
			for _, msg := range msgs {
				if msg.Cancels() {
					onCancel(msg.JobID)
				}
			}
		}
	}()
	return l, nil
}

// Close unsubscribes and returns once onCancel is no longer called.
func (l *CancelListener) Close() {
	_ = l.ps.Close()
	<-l.done
}

package dispatch

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is the one place that knows Asynq's private Redis layout, which the reconciler reads to
// tell a lost or orphaned task from a live one. It is pinned to the Asynq version in go.mod by
// TestAsynqLayoutPinned: check these against asynq/internal/base before upgrading.

// asynqVersion is the Asynq release whose layout this file describes.
const asynqVersion = "v0.26.0"

// asynqQueuesKey is the set in which Asynq lists known queues (base.AllQueues).
const asynqQueuesKey = "asynq:queues"

// asynqLease is how far a live Asynq server extends the leases of its active tasks, every 5s.
const asynqLease = 30 * time.Second

// asynqLeaseKey is the sorted set of a queue's active tasks' leases: task id -> expiry in Unix
// seconds (base.LeaseKey).
func asynqLeaseKey(queue string) string { return "asynq:{" + queue + "}:lease" }

// RegisterQueue lists queue among Asynq's known queues. Asynq clients register a queue once per
// process, so after Redis lost its data a queue that tasks are enqueued into may be missing from the
// list, and Asynq's inspector (RunTask, GetTaskInfo) then reports it not found.
func RegisterQueue(ctx context.Context, rdb redis.UniversalClient, queue string) error {
	if err := rdb.SAdd(ctx, asynqQueuesKey, queue).Err(); err != nil {
		return fmt.Errorf("register queue %s: %w", queue, err)
	}
	return nil
}

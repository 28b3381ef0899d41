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

// asynqTaskKey is the hash of a task (base.TaskKey); its "state" field names the list or set that
// holds the task's id.
func asynqTaskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// asynqPendingKey is the list of a queue's pending tasks, newest first (base.PendingKey).
func asynqPendingKey(queue string) string { return "asynq:{" + queue + "}:pending" }

// stolenKey marks a task taken out of Asynq by Steal for StolenTTL: until the step is claimed its
// task is in no queue, and the reconciler must not take it for lost. It shares the queue's hash tag,
// so the script's keys live in one cluster slot.
func stolenKey(queue, id string) string { return "cao:stolen:{" + queue + "}:" + id }

// StolenTTL is how long a stolen task counts as present for the reconciler: the step is claimed
// within milliseconds; if the worker that took it died first, the reconciler enqueues it again
// once this has passed.
const StolenTTL = 15 * time.Second

// stealScript takes a pending task out of Asynq, as Inspector.DeleteTask does, but only while it is
// pending: a task that a server already handed out (active), or that waits for a time (scheduled,
// retry) or failed (archived), is left alone. Asynq pushes new tasks on the list's head, so the scan
// of LREM (count 1, from the head) finds a task enqueued a moment ago at once. CAO's tasks carry no
// unique key or group. KEYS: task hash, pending list, stolen mark. ARGV: task id, the mark's TTL in
// ms. Returns 1 if taken, else 0.
var stealScript = redis.NewScript(`
if redis.call("HGET", KEYS[1], "state") ~= "pending" then
	return 0
end
if redis.call("LREM", KEYS[2], 1, ARGV[1]) == 0 then
	return 0
end
redis.call("DEL", KEYS[1])
redis.call("SET", KEYS[3], "1", "PX", ARGV[2])
return 1
`)

// Steal takes task id out of queue if it is still pending, and reports whether it did: the caller
// then owns the task and runs it itself, since no Asynq server will hand it out any more. A stolen
// task that is never run is not lost: its step stays QUEUED in the database, and the reconciler
// enqueues it again once StolenTTL has passed.
func Steal(ctx context.Context, rdb redis.UniversalClient, queue, id string) (bool, error) {
	keys := []string{asynqTaskKey(queue, id), asynqPendingKey(queue), stolenKey(queue, id)}
	n, err := stealScript.Run(ctx, rdb, keys, id, StolenTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("take task %s: %w", id, err)
	}
	return n == 1, nil
}

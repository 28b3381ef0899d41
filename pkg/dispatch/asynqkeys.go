package dispatch

import "time"

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

package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
)

// TestEnqueueAsAsynqDoes pins EnqueueAll to the Asynq release of asynqVersion: a task to run now
// leaves Redis exactly as Asynq's client leaves it (the message byte for byte, the hash's state, the
// pending list, the queue's registration), and Asynq's own inspector reads it back.
func TestEnqueueAsAsynqDoes(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := context.Background()
	q := asynq.NewClientFromRedisClient(rdb.Client)
	tasks := []store.OutboxTask{
		{TaskID: "step:j1:a:1", Queue: "pin-default", TypeName: "cao:step", Payload: []byte(`{"job_id":"j1","step":"a"}`)},
		{TaskID: "step:j1:b:1", Queue: "pin-heavy", TypeName: "cao:step"}, // no payload
	}
	type written struct {
		hash    map[string]string
		pending []string
	}
	read := func(t *testing.T, task store.OutboxTask) written {
		t.Helper()
		h, err := rdb.Client.HGetAll(ctx, asynqTaskKey(task.Queue, task.TaskID)).Result()
		require.NoError(t, err)
		require.NotEmpty(t, h["pending_since"])
		delete(h, "pending_since") // the clock's
		p, err := rdb.Client.LRange(ctx, asynqPendingKey(task.Queue), 0, -1).Result()
		require.NoError(t, err)
		return written{h, p}
	}
	want := make([]written, len(tasks))
	for i, task := range tasks {
		require.NoError(t, Enqueue(ctx, q, task))
		want[i] = read(t, task)
	}
	require.NoError(t, rdb.Client.FlushDB(ctx).Err())
	for _, err := range EnqueueAll(ctx, rdb.Client, q, tasks) {
		require.NoError(t, err)
	}
	insp := asynq.NewInspectorFromRedisClient(rdb.Client)
	for i, task := range tasks {
		require.Equal(t, want[i], read(t, task), "task %s", task.TaskID)
		info, err := insp.GetTaskInfo(task.Queue, task.TaskID)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State)
		require.Equal(t, task.TypeName, info.Type)
		require.Equal(t, TaskMaxRetry, info.MaxRetry)
		require.Equal(t, asynqTaskTimeout, info.Timeout)
		require.Equal(t, string(task.Payload), string(info.Payload))
	}
	queues, err := rdb.Client.SMembers(ctx, asynqQueuesKey).Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"pin-default", "pin-heavy"}, queues)

	// A task present already counts as enqueued and is left as it was.
	for _, err := range EnqueueAll(ctx, rdb.Client, q, tasks) {
		require.NoError(t, err)
	}
	for i, task := range tasks {
		require.Equal(t, want[i], read(t, task))
	}
}

// TestEnqueueAllMixedAndAfterScriptFlush: tasks that wait for a time are scheduled as Asynq's client
// schedules them, a task without a type is refused alone, and the script is sent whole when Redis
// forgot it.
func TestEnqueueAllMixedAndAfterScriptFlush(t *testing.T) {
	t.Parallel()
	rdb := testinfra.Redis(t)
	ctx := context.Background()
	q := asynq.NewClientFromRedisClient(rdb.Client)
	require.NoError(t, rdb.Client.ScriptFlush(ctx).Err())
	at := time.Now().Add(time.Hour)
	tasks := []store.OutboxTask{
		{TaskID: "now", Queue: "mix", TypeName: "cao:step", Payload: []byte("{}")},
		{TaskID: "later", Queue: "mix", TypeName: "cao:step", Payload: []byte("{}"), ProcessAt: &at},
		{TaskID: "untyped", Queue: "mix", TypeName: " "},
	}
	errs := EnqueueAll(ctx, rdb.Client, q, tasks)
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.Error(t, errs[2])
	insp := asynq.NewInspectorFromRedisClient(rdb.Client)
	now, err := insp.GetTaskInfo("mix", "now")
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, now.State)
	later, err := insp.GetTaskInfo("mix", "later")
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStateScheduled, later.State)
	_, err = insp.GetTaskInfo("mix", "untyped")
	require.ErrorIs(t, err, asynq.ErrTaskNotFound)
}

// TestEnqueueAllRedisDown: every task gets the error, none is taken for enqueued.
func TestEnqueueAllRedisDown(t *testing.T) {
	t.Parallel()
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer down.Close()
	errs := EnqueueAll(context.Background(), down, asynq.NewClientFromRedisClient(down), []store.OutboxTask{
		{TaskID: "a", Queue: "q", TypeName: "cao:step"}, {TaskID: "b", Queue: "q", TypeName: "cao:step"},
	})
	require.Len(t, errs, 2)
	for _, err := range errs {
		require.Error(t, err)
	}
}

// TestEnqueueAllOnTheEmbeddedRedis: the embedded mode's in-process Redis (miniredis) runs the
// pipelined script, NOSCRIPT included, and Asynq's inspector reads the tasks back.
func TestEnqueueAllOnTheEmbeddedRedis(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	tasks := []store.OutboxTask{
		{TaskID: "a", Queue: "default", TypeName: "cao:step", Payload: []byte("{}")},
		{TaskID: "b", Queue: "heavy", TypeName: "cao:step", Payload: []byte("{}")},
	}
	for range 2 { // the second time the ids exist already: success, nothing changed
		for _, err := range EnqueueAll(ctx, rdb, asynq.NewClientFromRedisClient(rdb), tasks) {
			require.NoError(t, err)
		}
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	for _, task := range tasks {
		info, err := insp.GetTaskInfo(task.Queue, task.TaskID)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State)
	}
	n, err := rdb.LLen(ctx, asynqPendingKey("default")).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

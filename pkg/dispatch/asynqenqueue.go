package dispatch

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/cao-run/cao/pkg/store"
)

// Tasks to run now are enqueued many at a time: one pipeline (one round trip) carries the Asynq
// enqueue of every task of a batch, where Asynq's client takes a round trip per task. This file
// writes what Asynq's client would write for such a task, byte for byte (TestEnqueueAsAsynqDoes,
// pinned to asynqVersion with the layout in asynqkeys.go): the task message, encoded as
// asynq/internal/base.EncodeMessage does, and Asynq's enqueue script. Tasks that wait for a time
// are scheduled by Asynq's client, one by one: they are few (retries, fallbacks).

// asynqEnqueueScript is Asynq's enqueueCmd (asynq/internal/rdb): a task id that exists already is
// refused (0), as Asynq's ErrTaskIDConflict. KEYS: task hash, pending list. ARGV: message, task id,
// now in Unix ns.
var asynqEnqueueScript = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 1 then
	return 0
end
redis.call("HSET", KEYS[1],
           "msg", ARGV[1],
           "state", "pending",
           "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[2], ARGV[2])
return 1
`)

// asynqTaskTimeout is the Asynq timeout of step tasks: it only guards against hung handlers; steps
// have their own timeouts.
const asynqTaskTimeout = 24 * time.Hour

// The field numbers of asynq's TaskMessage (asynq/internal/proto/asynq.proto) that CAO's tasks set.
const (
	asynqFieldType    = 1
	asynqFieldPayload = 2
	asynqFieldID      = 3
	asynqFieldQueue   = 4
	asynqFieldRetry   = 5
	asynqFieldTimeout = 8
)

// encodeAsynqMessage encodes the message Asynq's client makes for a task to run now with the options
// Enqueue gives it (an id, a queue, TaskMaxRetry, asynqTaskTimeout, no deadline), as proto.Marshal
// does: fields in number order, zero values left out.
func encodeAsynqMessage(t store.OutboxTask) []byte {
	b := make([]byte, 0, len(t.Payload)+len(t.TypeName)+len(t.TaskID)+len(t.Queue)+24)
	str := func(num protowire.Number, s string) {
		if s != "" {
			b = protowire.AppendTag(b, num, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	str(asynqFieldType, t.TypeName)
	if len(t.Payload) > 0 {
		b = protowire.AppendTag(b, asynqFieldPayload, protowire.BytesType)
		b = protowire.AppendBytes(b, t.Payload)
	}
	str(asynqFieldID, t.TaskID)
	str(asynqFieldQueue, t.Queue)
	b = protowire.AppendTag(b, asynqFieldRetry, protowire.VarintType)
	b = protowire.AppendVarint(b, TaskMaxRetry)
	b = protowire.AppendTag(b, asynqFieldTimeout, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(asynqTaskTimeout/time.Second))
	return b
}

// EnqueueAll puts tasks into Asynq with their deterministic ids and returns one error per task (nil:
// enqueued, or its id was present already). Tasks to run now share one pipeline, which also lists
// their queues among Asynq's (RegisterQueue); tasks that wait for a time go through q one by one.
func EnqueueAll(ctx context.Context, rdb redis.UniversalClient, q Enqueuer, tasks []store.OutboxTask) []error {
	errs := make([]error, len(tasks))
	now := make([]int, 0, len(tasks))
	for i, t := range tasks {
		if t.ProcessAt != nil {
			errs[i] = Enqueue(ctx, q, t)
			continue
		}
		if strings.TrimSpace(t.TypeName) == "" {
			errs[i] = fmt.Errorf("enqueue %s: the task has no type", t.TaskID)
			continue
		}
		now = append(now, i)
	}
	if len(now) == 0 {
		return errs
	}
	at := time.Now().UnixNano()
	run := func(eval func(p redis.Pipeliner, keys []string, args ...any) *redis.Cmd, which []int) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(tasks))
		_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			queues := map[string]bool{}
			for _, i := range which {
				t := tasks[i]
				if !queues[t.Queue] {
					queues[t.Queue] = true
					p.SAdd(ctx, asynqQueuesKey, t.Queue)
				}
				cmds[i] = eval(p, []string{asynqTaskKey(t.Queue, t.TaskID), asynqPendingKey(t.Queue)}, encodeAsynqMessage(t), t.TaskID, at)
			}
			return nil
		})
		return cmds
	}
	// The script is usually loaded (an earlier batch, or Asynq's client, loaded it): send its sha,
	// and the whole script only for the tasks Redis answered NOSCRIPT (after a restart, say).
	cmds := run(func(p redis.Pipeliner, keys []string, args ...any) *redis.Cmd {
		return asynqEnqueueScript.EvalSha(ctx, p, keys, args...)
	}, now)
	var again []int
	for _, i := range now {
		if err := cmds[i].Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		for i, c := range run(func(p redis.Pipeliner, keys []string, args ...any) *redis.Cmd {
			return asynqEnqueueScript.Eval(ctx, p, keys, args...)
		}, again) {
			if c != nil {
				cmds[i] = c
			}
		}
	}
	for _, i := range now {
		// 0: the id exists already, which counts as enqueued (as ErrTaskIDConflict in Enqueue).
		if err := cmds[i].Err(); err != nil {
			errs[i] = fmt.Errorf("enqueue %s: %w", tasks[i].TaskID, err)
		}
	}
	return errs
}

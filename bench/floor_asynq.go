package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Settings of the raw Asynq floors: what plain Asynq does with the same worker concurrency and queue
// as a CAO worker, polling empty queues every 10 ms.
const (
	floorConcurrency       = 50
	floorTaskCheckInterval = 10 * time.Millisecond
	floorTaskType          = "bench:chain"
)

// asynqFloor is an in-process Asynq server and client sharing one go-redis client on the floor DB.
type asynqFloor struct {
	rdb    *redis.Client
	client *asynq.Client
	srv    *asynq.Server
}

// floorRedis returns a client of the floors' Redis DB (-floor-redis-db) with poolSize connections
// (0: go-redis's default), after flushing the DB.
func floorRedis(ctx context.Context, o options, poolSize int) (*redis.Client, error) {
	rdb := redis.NewClient(&redis.Options{Addr: o.redisAddr, DB: o.floorRedisDB, PoolSize: poolSize})
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("floor redis %s db %d: %w", o.redisAddr, o.floorRedisDB, err)
	}
	return rdb, nil
}

// newAsynqFloor flushes the floor Redis DB and prepares a client and a server; start starts the server.
func newAsynqFloor(ctx context.Context, o options) (*asynqFloor, error) {
	rdb, err := floorRedis(ctx, o, 2*floorConcurrency)
	if err != nil {
		return nil, err
	}
	f := &asynqFloor{rdb: rdb}
	f.client = asynq.NewClientFromRedisClient(f.rdb)
	f.srv = asynq.NewServerFromRedisClient(f.rdb, asynq.Config{
		Concurrency:       floorConcurrency,
		Queues:            map[string]int{"default": 1},
		TaskCheckInterval: floorTaskCheckInterval,
		LogLevel:          asynq.WarnLevel,
	})
	return f, nil
}

// start runs handler for every task; on error the floor is stopped.
func (f *asynqFloor) start(handler asynq.HandlerFunc) error {
	mux := asynq.NewServeMux()
	mux.HandleFunc(floorTaskType, handler)
	if err := f.srv.Start(mux); err != nil {
		_ = f.client.Close()
		_ = f.rdb.Close()
		return fmt.Errorf("start asynq floor server: %w", err)
	}
	return nil
}

// stop shuts the server down and closes the connections.
func (f *asynqFloor) stop() {
	f.srv.Shutdown()
	_ = f.client.Close()
	_ = f.rdb.Close()
}

// chainTask is the payload of one task of a floor chain.
type chainTask struct {
	Chain int `json:"chain"`
	Index int `json:"index"`
}

func newChainTask(chain, index int) *asynq.Task {
	b, _ := json.Marshal(chainTask{Chain: chain, Index: index})
	return asynq.NewTask(floorTaskType, b)
}

// chainFloor runs `chains` chains of `length` tasks on raw Asynq, each handler enqueuing the next task of
// its chain, the first tasks enqueued by enqueuers goroutines. It returns tasks per second from the
// first enqueue to the last task done.
func chainFloor(ctx context.Context, o options, chains, length, enqueuers int) (float64, error) {
	total := int64(chains * length)
	var done atomic.Int64
	finished := make(chan time.Time, 1)
	f, err := newAsynqFloor(ctx, o)
	if err != nil {
		return 0, err
	}
	err = f.start(func(ctx context.Context, t *asynq.Task) error {
		var p chainTask
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return fmt.Errorf("%w: %w", asynq.SkipRetry, err)
		}
		if p.Index+1 < length {
			if _, err := f.client.EnqueueContext(ctx, newChainTask(p.Chain, p.Index+1)); err != nil {
				return err
			}
		}
		if done.Add(1) == total {
			finished <- time.Now()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	defer f.stop()

	start := time.Now()
	if err := enqueueChainStarts(ctx, f.client, chains, enqueuers); err != nil {
		return 0, err
	}
	select {
	case end := <-finished:
		return float64(total) / end.Sub(start).Seconds(), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("asynq floor: %d of %d tasks done: %w", done.Load(), total, ctx.Err())
	}
}

// enqueueChainStarts enqueues the first task of each chain (numbered 1 to chains) from enqueuers goroutines.
func enqueueChainStarts(ctx context.Context, client *asynq.Client, chains, enqueuers int) error {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		encErr  error
	)
	for range enqueuers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(chains); i = next.Add(1) {
				if _, err := client.EnqueueContext(ctx, newChainTask(int(i), 0)); err != nil {
					errOnce.Do(func() { encErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if encErr != nil {
		return fmt.Errorf("enqueue: %w", encErr)
	}
	return nil
}

// idleFloor measures raw Asynq on an idle server: the latency from Enqueue to the handler starting,
// over samples sequential tasks, and then the CPU this process uses (of one core) over idleFor with the
// server idle.
func idleFloor(ctx context.Context, o options, samples int, idleFor time.Duration) ([]time.Duration, float64, error) {
	started := make(chan time.Time, 1)
	f, err := newAsynqFloor(ctx, o)
	if err != nil {
		return nil, 0, err
	}
	err = f.start(func(context.Context, *asynq.Task) error {
		started <- time.Now()
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	defer f.stop()
	lat := make([]time.Duration, 0, samples)
	for i := range samples {
		t0 := time.Now()
		if _, err := f.client.EnqueueContext(ctx, newChainTask(i, 0)); err != nil {
			return nil, 0, err
		}
		select {
		case t1 := <-started:
			lat = append(lat, t1.Sub(t0))
		case <-time.After(10 * time.Second):
			return nil, 0, fmt.Errorf("asynq floor: task %d not started within 10s", i)
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	cpu, err := idleCPU(ctx, idleFor, func() (time.Duration, error) { return procCPUTime("self") })
	return lat, cpu, err
}

// idleCPU waits a second for things to settle, then returns the CPU that read reports over d, in
// percent of one core.
func idleCPU(ctx context.Context, d time.Duration, read func() (time.Duration, error)) (float64, error) {
	if err := sleepCtx(ctx, time.Second); err != nil {
		return 0, err
	}
	before, err := read()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return 0, err
	}
	after, err := read()
	if err != nil {
		return 0, err
	}
	return 100 * float64(after-before) / float64(time.Since(t0)), nil
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

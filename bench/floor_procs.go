package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Target 7's floor: the raw Asynq chain run by 1, 2 or 4 worker processes, so that CAO's scaling
// from 1 to N worker processes stands beside what plain Asynq does with the same processes on the
// same cores. The bench binary runs itself as such a worker process when floorWorkerEnv is set.

// floorWorkerEnv, when set (to a floorWorkerSpec in JSON), makes the bench binary a raw Asynq worker
// process of the scaling floor.
const floorWorkerEnv = "CAO_BENCH_FLOOR_WORKER"

// Keys of the scaling floor in its Redis DB: the chains finished, and the time the last one
// finished (pushed once, popped by the bench).
const (
	floorDoneKey     = "bench:floor:done"
	floorFinishedKey = "bench:floor:finished"
)

// floorWorkerSpec is what a floor worker process runs.
type floorWorkerSpec struct {
	RedisAddr string `json:"redis_addr"`
	RedisDB   int    `json:"redis_db"`
	Chains    int    `json:"chains"`
	Length    int    `json:"length"`
}

// runFloorWorker is the whole of a floor worker process: an Asynq server as the in-process floor's
// (floorConcurrency handlers, 10 ms poll) whose handlers enqueue the next task of their chain; the
// last task of a chain counts it, and the chain that completes the count pushes the time. It writes
// "ready" on stdout once it serves, and stops on SIGTERM.
func runFloorWorker(specJSON string) error {
	var spec floorWorkerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("%s: %w", floorWorkerEnv, err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: spec.RedisAddr, DB: spec.RedisDB, PoolSize: 2 * floorConcurrency})
	defer rdb.Close()
	client := asynq.NewClientFromRedisClient(rdb)
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: floorConcurrency, Queues: map[string]int{"default": 1},
		TaskCheckInterval: floorTaskCheckInterval, LogLevel: asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(floorTaskType, func(ctx context.Context, t *asynq.Task) error {
		var p chainTask
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return fmt.Errorf("%w: %w", asynq.SkipRetry, err)
		}
		if p.Index+1 < spec.Length {
			_, err := client.EnqueueContext(ctx, newChainTask(p.Chain, p.Index+1))
			return err
		}
		n, err := rdb.Incr(ctx, floorDoneKey).Result()
		if err == nil && n == int64(spec.Chains) {
			err = rdb.RPush(ctx, floorFinishedKey, time.Now().UnixNano()).Err()
		}
		return err
	})
	if err := srv.Start(mux); err != nil {
		return err
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	srv.Shutdown()
	return nil
}

// chainFloorProcs runs `chains` chains of `length` tasks on raw Asynq served by procs worker
// processes (runFloorWorker), the first tasks enqueued by enqueuers goroutines of this process, and
// returns tasks per second from the first enqueue to the last task done.
func chainFloorProcs(ctx context.Context, o options, chains, length, enqueuers, procs int) (float64, error) {
	rdb, err := floorRedis(ctx, o, 2*enqueuers)
	if err != nil {
		return 0, err
	}
	defer rdb.Close()
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	spec, _ := json.Marshal(floorWorkerSpec{RedisAddr: o.redisAddr, RedisDB: o.floorRedisDB, Chains: chains, Length: length})
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range children {
			_ = c.Wait()
		}
	}()
	for range procs {
		c := exec.CommandContext(ctx, self)
		c.Env = append(os.Environ(), floorWorkerEnv+"="+string(spec))
		c.Stderr = os.Stderr
		out, err := c.StdoutPipe()
		if err != nil {
			return 0, err
		}
		if err := c.Start(); err != nil {
			return 0, fmt.Errorf("start a floor worker: %w", err)
		}
		children = append(children, c)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = errors.New("no ready line")
		}
		if err != nil {
			return 0, fmt.Errorf("floor worker did not start (it wrote %q): %w", line, err)
		}
	}

	client := asynq.NewClientFromRedisClient(rdb)
	start := time.Now()
	if err := enqueueChainStarts(ctx, client, chains, enqueuers); err != nil {
		return 0, err
	}
	got, err := rdb.BLPop(ctx, chainWaitTimeout, floorFinishedKey).Result()
	if err != nil {
		done, _ := rdb.Get(context.WithoutCancel(ctx), floorDoneKey).Int()
		if errors.Is(err, redis.Nil) {
			err = fmt.Errorf("not done within %s", chainWaitTimeout)
		}
		return 0, fmt.Errorf("asynq floor in %d processes: %d of %d chains done: %w", procs, done, chains, err)
	}
	ns, err := strconv.ParseInt(got[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("floor finish time %q: %w", got[1], err)
	}
	return float64(chains*length) / time.Unix(0, ns).Sub(start).Seconds(), nil
}

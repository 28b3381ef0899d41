package limiter

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/redisconn/redisconntest"
)

// keyRecorder is a go-redis hook that records the keys of every script call and MULTI block.
type keyRecorder struct {
	mu      sync.Mutex
	calls   []recordedCall
	scripts map[string]bool // SHA1 of every script run
}

type recordedCall struct {
	what string // "script <sha>" or "multi"
	keys []string
}

func (r *keyRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *keyRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		switch strings.ToLower(cmd.Name()) {
		case "eval", "evalsha", "eval_ro", "evalsha_ro":
			sha := fmt.Sprint(args[1])
			if n := strings.ToLower(cmd.Name()); n == "eval" || n == "eval_ro" {
				sum := sha1.Sum([]byte(sha))
				sha = hex.EncodeToString(sum[:])
			}
			nkeys, _ := strconv.Atoi(fmt.Sprint(args[2]))
			keys := make([]string, nkeys)
			for i := range keys {
				keys[i] = fmt.Sprint(args[3+i])
			}
			r.mu.Lock()
			r.scripts[sha] = true
			r.calls = append(r.calls, recordedCall{what: "script " + sha, keys: keys})
			r.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook sees the package's TxPipeline blocks (it uses no plain pipeline): every
// command in one must be in one slot. The limiter's MULTI commands all take one key, the first
// argument.
func (r *keyRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var keys []string
		for _, c := range cmds {
			switch strings.ToLower(c.Name()) {
			case "multi", "exec":
			default:
				keys = append(keys, fmt.Sprint(c.Args()[1]))
			}
		}
		r.mu.Lock()
		r.calls = append(r.calls, recordedCall{what: "multi", keys: keys})
		r.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestEveryScriptStaysInOneHashSlot runs every operation of the package — semaphore acquire (free,
// full, queued), renew, release with a wake-up, leave, in use; the wait room; rate reserve and sent —
// on a real three-master Redis Cluster, where a script or MULTI whose keys span slots fails with
// CROSSSLOT. It also records the keys of every script call and MULTI and checks, with its own CRC16,
// that each call's keys share one slot, and that every script of the package ran.
func TestEveryScriptStaysInOneHashSlot(t *testing.T) {
	t.Parallel()
	cl := redisconntest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := &keyRecorder{scripts: map[string]bool{}}
	rdb.AddHook(rec)

	sem := NewSemaphore(rdb, Config{})
	rate := NewRateLimiter(rdb, Config{})
	room := NewWaitRoom(sem, WaitRoomConfig{ID: "slots", Poll: time.Hour})
	require.NoError(t, room.Start(ctx))
	t.Cleanup(func() { require.NoError(t, room.Stop(context.Background())) })

	// Names whose slots land on different nodes; registry names are [A-Za-z0-9_-]+, tenants add '.'.
	names := []string{"llm", "sim", "a-b_c", "x", "api:acme.corp", "svc9"}
	nodesSeen := map[string]bool{}
	for _, name := range names {
		a, err := sem.Acquire(ctx, name, 1, time.Minute, "w1")
		require.NoError(t, err, name)
		_, err = sem.Acquire(ctx, name, 1, time.Minute, "w2")
		require.ErrorIs(t, err, ErrFull, name)
		a, err = sem.Renew(ctx, a, time.Minute)
		require.NoError(t, err, name)
		n, err := sem.InUse(ctx, name)
		require.NoError(t, err, name)
		require.Equal(t, 1, n)
		require.NoError(t, sem.Leave(ctx, name, "w2"), name)

		// A waiter in the wait room is woken through pub/sub by the release (its poll is an hour).
		got := acquireAsync(ctx, room, name, 1, 1)
		waitQueued(t, ctx, sem, name)
		require.NoError(t, sem.Release(ctx, a), name)
		b := receive(t, got, name)
		require.NoError(t, sem.Release(ctx, b), name)

		rsv, ok, _, err := rate.Reserve(ctx, name, 2, time.Minute)
		require.NoError(t, err, name)
		require.True(t, ok)
		require.NoError(t, rate.Sent(ctx, rsv), name)

		node, err := cl.Client.MasterForKey(ctx, sem.keys(name).holders)
		require.NoError(t, err)
		nodesSeen[node.Options().Addr] = true
	}
	require.Greater(t, len(nodesSeen), 1, "the names spread over several nodes")

	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.NotEmpty(t, rec.calls)
	for _, c := range rec.calls {
		require.NotEmpty(t, c.keys, "%s names its keys", c.what)
		for _, k := range c.keys {
			require.Equal(t, redisconntest.Slot(c.keys[0]), redisconntest.Slot(k), "%s: keys %v span hash slots", c.what, c.keys)
		}
	}
	for name, s := range map[string]*redis.Script{
		"acquire": acquireScript, "renew": renewScript, "release": releaseScript, "in use": inUseScript,
		"allow": allowScript, "sent": sentScript,
	} {
		require.True(t, rec.scripts[s.Hash()], "the %s script ran", name)
	}
}

// waitQueued waits until semaphore name's fleet-wide queue holds one waiter.
func waitQueued(t *testing.T, ctx context.Context, sem *Semaphore, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ids, err := sem.waiters(ctx, name, 2)
		if err == nil && len(ids) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no waiter queued for %s within 10s (%v, %v)", name, ids, err)
		}
		<-tick.C
	}
}

// Semaphore names with braces would break the shared hash tag; they are refused, and the keys of
// every accepted name share one slot whatever the prefix.
func TestSemaphoreKeysShareOneSlot(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"cao:", "test:0a1b:", "x{", "a}b:"} {
		sem := NewSemaphore(redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", "1")}), Config{Prefix: prefix})
		for _, name := range []string{"llm", "a", "-", "api:acme.corp", "A_b-9"} {
			k := sem.keys(name)
			slot := redisconntest.Slot(k.holders)
			for _, key := range []string{k.fence, k.waiters, k.seen} {
				require.Equal(t, slot, redisconntest.Slot(key), "prefix %q name %q: %s", prefix, name, key)
			}
		}
		_ = sem.rdb.Close()
	}
	sem := NewSemaphore(redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", "1")}), Config{})
	defer sem.rdb.Close()
	ctx := context.Background()
	for _, name := range []string{"}x", "a{b}", "{", "}"} {
		_, err := sem.Acquire(ctx, name, 1, time.Second, "")
		require.ErrorContains(t, err, "may not contain", name)
		_, err = sem.InUse(ctx, name)
		require.ErrorContains(t, err, "may not contain", name)
		require.ErrorContains(t, sem.Leave(ctx, name, "w"), "may not contain", name)
	}
}

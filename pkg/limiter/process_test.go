package limiter

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// Child processes are this test binary re-executed with these variables set.
const (
	envHelper = "CAO_LIMITER_HELPER" // "hammer" or "hold"
	envPrefix = "CAO_LIMITER_PREFIX"
	envProc   = "CAO_LIMITER_PROC"
)

const (
	hammerLimit      = 3
	hammerProcs      = 3 // the parent and two children
	hammerGoroutines = 16
	hammerRounds     = 6 // acquisitions per goroutine: 288 in all
	holdTTL          = time.Second
)

// hammerKeys are the recorder keys the hammer processes share.
type hammerKeys struct{ holding, max, violations, log, ready string }

func newHammerKeys(prefix string) hammerKeys {
	return hammerKeys{
		holding:    prefix + "rec:holding",
		max:        prefix + "rec:max",
		violations: prefix + "rec:violations",
		log:        prefix + "rec:log",
		ready:      prefix + "rec:ready",
	}
}

// enterScript counts one more holder and keeps the highest count seen.
var enterScript = redis.NewScript(`
local v = redis.call('INCR', KEYS[1])
if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end
return v
`)

// childCommand re-executes the test binary to run one helper test.
func childCommand(ctx context.Context, test, helper, prefix, proc string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), envHelper+"="+helper, envPrefix+"="+prefix, envProc+"="+proc)
	return cmd
}

// helperClient connects a child process to the Redis the parent uses.
func helperClient(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(testinfra.RedisURL())
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// hammer runs hammerGoroutines goroutines that each take a slot hammerRounds times, check the recorder
// while holding it for a random number of Redis round trips, and log the lease they got.
func hammer(ctx context.Context, t *testing.T, rdb redis.UniversalClient, prefix, proc string) {
	t.Helper()
	sem := NewSemaphore(rdb, Config{Prefix: prefix})
	k := newHammerKeys(prefix)

	// Start together, so the processes really compete.
	require.NoError(t, rdb.Incr(ctx, k.ready).Err())
	testinfra.Eventually(t, 30*time.Second, func() bool {
		n, err := rdb.Get(ctx, k.ready).Int()
		require.NoError(t, err)
		return n >= hammerProcs
	}, "not all %d hammer processes started", hammerProcs)

	check := func(n int64) {
		if n > hammerLimit {
			_ = rdb.Incr(ctx, k.violations).Err()
			t.Errorf("%d holders at once, limit %d", n, hammerLimit)
		}
	}
	var wg sync.WaitGroup
	for g := range hammerGoroutines {
		wg.Go(func() {
			waiter := fmt.Sprintf("%s/%d", proc, g)
			for round := range hammerRounds {
				var l Lease
				for {
					var err error
					l, err = sem.Acquire(ctx, "api", hammerLimit, 10*time.Second, waiter)
					if err == nil {
						break
					}
					if !errors.Is(err, ErrFull) {
						t.Errorf("acquire: %v", err)
						return
					}
				}
				n, err := enterScript.Run(ctx, rdb, []string{k.holding, k.max}).Int64()
				if err != nil {
					t.Errorf("record enter: %v", err)
					return
				}
				check(n)
				for range rand.IntN(4) {
					n, err := rdb.Get(ctx, k.holding).Int64()
					if err != nil {
						t.Errorf("record hold: %v", err)
						return
					}
					check(n)
				}
				entry := fmt.Sprintf("%s %d %d %d %d", proc, g, round, l.Token, l.ExpiresAt.UnixMilli())
				if err := rdb.RPush(ctx, k.log, entry).Err(); err != nil {
					t.Errorf("record lease: %v", err)
					return
				}
				if err := rdb.Decr(ctx, k.holding).Err(); err != nil {
					t.Errorf("record exit: %v", err)
					return
				}
				if err := sem.Release(ctx, l); err != nil {
					t.Errorf("release: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestHelperHammer is the child side of TestSemaphoreAcrossProcesses; it does nothing in a normal run.
func TestHelperHammer(t *testing.T) {
	if os.Getenv(envHelper) != "hammer" {
		return
	}
	hammer(testinfra.Context(t, 60*time.Second), t, helperClient(t), os.Getenv(envPrefix), os.Getenv(envProc))
}

// TestSemaphoreAcrossProcesses hammers one semaphore from three processes and checks that no more than
// the limit ever hold it and that fencing tokens follow the order of grants.
func TestSemaphoreAcrossProcesses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	k := newHammerKeys(b.prefix)

	children := make([]error, hammerProcs-1)
	outputs := make([][]byte, hammerProcs-1)
	var wg sync.WaitGroup
	for i := range children {
		cmd := childCommand(b.ctx, "TestHelperHammer", "hammer", b.prefix, fmt.Sprintf("child%d", i))
		wg.Go(func() { outputs[i], children[i] = cmd.CombinedOutput() })
	}
	hammer(b.ctx, t, b.rdb, b.prefix, "parent")
	wg.Wait()
	for i, err := range children {
		require.NoError(t, err, "child %d:\n%s", i, outputs[i])
	}

	violations, err := b.rdb.Get(b.ctx, k.violations).Int()
	if !errors.Is(err, redis.Nil) {
		require.NoError(t, err)
	}
	require.Zero(t, violations)
	maxHolding, err := b.rdb.Get(b.ctx, k.max).Int()
	require.NoError(t, err)
	require.Equal(t, hammerLimit, maxHolding, "the semaphore was never full: no contention was tested")

	entries, err := b.rdb.LRange(b.ctx, k.log, 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, entries, hammerProcs*hammerGoroutines*hammerRounds)
	type grant struct {
		caller       string
		token, expMs int64
	}
	grants := make([]grant, 0, len(entries))
	lastOfCaller := map[string]int64{}
	seen := map[int64]bool{}
	for _, e := range entries {
		f := strings.Fields(e)
		require.Len(t, f, 5, e)
		token, err := strconv.ParseInt(f[3], 10, 64)
		require.NoError(t, err)
		expMs, err := strconv.ParseInt(f[4], 10, 64)
		require.NoError(t, err)
		caller := f[0] + "/" + f[1]
		require.False(t, seen[token], "token %d issued twice", token)
		seen[token] = true
		// Each goroutine logs its leases in the order it got them.
		require.Greater(t, token, lastOfCaller[caller], "tokens of %s went down", caller)
		lastOfCaller[caller] = token
		grants = append(grants, grant{caller: caller, token: token, expMs: expMs})
	}
	// All leases have the same ttl, so server grant order is expiry order: tokens must follow it.
	slices.SortFunc(grants, func(a, b grant) int { return cmp.Compare(a.token, b.token) })
	for i := 1; i < len(grants); i++ {
		require.GreaterOrEqual(t, grants[i].expMs, grants[i-1].expMs,
			"token %d was granted before token %d", grants[i].token, grants[i-1].token)
	}
}

// TestHelperHold is the child side of TestSemaphoreSlotFreedAfterKill; it does nothing in a normal run.
func TestHelperHold(t *testing.T) {
	if os.Getenv(envHelper) != "hold" {
		return
	}
	ctx := testinfra.Context(t, 60*time.Second)
	sem := NewSemaphore(helperClient(t), Config{Prefix: os.Getenv(envPrefix)})
	l, err := sem.Acquire(ctx, "api", 1, holdTTL, "child")
	require.NoError(t, err)
	fmt.Printf("HELD %d %d\n", l.Token, l.ExpiresAt.UnixMilli())
	<-ctx.Done() // until SIGKILL; the deadline only bounds an orphan
}

// TestSemaphoreSlotFreedAfterKill kills a holder with SIGKILL and checks its slot comes back once the
// lease's ttl has passed, and not before.
func TestSemaphoreSlotFreedAfterKill(t *testing.T) {
	t.Parallel()
	b := setup(t)

	cmd := childCommand(b.ctx, "TestHelperHold", "hold", b.prefix, "holder")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var heldToken, heldExpMs int64
	scanner := bufio.NewScanner(stdout)
	for heldToken == 0 && scanner.Scan() {
		_, _ = fmt.Sscanf(scanner.Text(), "HELD %d %d", &heldToken, &heldExpMs)
	}
	if heldToken == 0 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait() // stderr is complete only after Wait
		t.Fatalf("child did not report its lease: %v\n%s", scanner.Err(), stderr.String())
	}

	_, err = b.sem.Acquire(b.ctx, "api", 1, time.Minute, "parent")
	require.ErrorIs(t, err, ErrFull, "the child holds the only slot")

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	var got Lease
	testinfra.Eventually(t, holdTTL+500*time.Millisecond, func() bool {
		got, err = b.sem.Acquire(b.ctx, "api", 1, time.Minute, "parent")
		if err != nil {
			require.ErrorIs(t, err, ErrFull)
			return false
		}
		return true
	}, "the killed holder's slot did not come back")
	require.Greater(t, got.Token, heldToken)
	grantedMs := got.ExpiresAt.Add(-time.Minute).UnixMilli()
	require.GreaterOrEqual(t, grantedMs, heldExpMs, "slot granted before the killed holder's lease expired")
}

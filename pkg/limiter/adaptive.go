package limiter

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Adaptive keeps, per service and fleet-wide in Redis, the limits that adapt to the service's own
// answers:
//
//   - a hold (see Hold): the provider said its budget is spent, so no worker calls it until the
//     budget resets;
//   - an effective concurrency limit (AIMD, the way TCP finds a link's capacity): it starts at the
//     service's max_concurrency, is halved (not below min) when the service answers 429 or 503 or
//     times out (Overloaded), and grows by one after a run of successes (Succeeded), never above
//     max_concurrency. The semaphore is asked for a slot under the effective limit.
//
// A run of successes is `limit` successes (about one round trip of every slot) while the limit is
// below the one in force at the last decrease, the level known to be too much: the limit regains
// quickly the ground it lost. At or above that level it is 10 × `limit` successes, so that probing
// the level that failed costs one overload per ten rounds at most.
//
// A decrease counts only the calls admitted after the previous one: each decrease starts a new
// generation (State.Gen), and an overload reported by a call of an older generation, sent while the
// limit was higher, is ignored. A burst of 429s from calls sent together halves the limit once, and
// a decrease happens at most once per round trip.
type Adaptive struct {
	rdb redis.UniversalClient
	cfg Config
}

// AIMD is the shape of a service's adaptive limit: it starts at Max (max_concurrency) and stays
// within [Min, Max].
type AIMD struct {
	Max int
	Min int
}

// probeRuns is how many rounds of successes the limit needs to grow at or above the level of its
// last decrease.
const probeRuns = 10

// adaptiveTTL is how long a service's adaptive state outlives its last change: an idle service
// starts again from max_concurrency.
const adaptiveTTL = 24 * time.Hour

// State is a service's adaptive state at one moment.
type State struct {
	// Hold is how long calls must still wait for the provider's budget to reset; 0 when none.
	Hold time.Duration
	// HoldReason says which budget is spent (as given to Hold); empty without a hold.
	HoldReason string
	// Limit is the effective concurrency limit: the AIMD limit, or the Max asked for without AIMD.
	Limit int
	// Gen is the AIMD generation: how many times the limit decreased. A call records the generation
	// it was admitted in and reports it to Overloaded.
	Gen int64
}

// AdaptiveFor returns an Adaptive on the same Redis client and key prefix as sem.
func AdaptiveFor(sem *Semaphore) *Adaptive {
	return &Adaptive{rdb: sem.rdb, cfg: sem.cfg}
}

// adaptiveKeys are the keys of one service, sharing the {name} hash tag (one slot on Redis Cluster).
func (a *Adaptive) adaptiveKeys(name string) (hold, aimd string) {
	return adaptiveHoldKey(a.cfg.Prefix, name), a.cfg.Prefix + "aimd:{" + name + "}"
}

// adaptiveHoldKey is the key of service name's hold, which the semaphore's releases read too.
func adaptiveHoldKey(prefix, name string) string { return prefix + "hold:{" + name + "}" }

func checkAdaptiveName(op, name string) error {
	if name == "" || strings.ContainsAny(name, "{}") {
		return fmt.Errorf("limiter: %s %q: a service name must be non-empty, without '{' or '}'", op, name)
	}
	return nil
}

// luaAIMD reads the AIMD hash (KEYS[aimdKey]) into limit and gen, the limit clamped to [min, max]
// (ARGV[1], ARGV[2]): the registry may have changed since it was written.
const luaAIMD = `
local max_l, min_l = tonumber(ARGV[1]), tonumber(ARGV[2])
local st = redis.call('HMGET', KEYS[aimdKey], 'limit', 'gen', 'ok', 'ceil')
local limit = tonumber(st[1] or max_l)
if limit > max_l then limit = max_l end
if limit < min_l then limit = min_l end
local gen = tonumber(st[2] or '0')
local ok = tonumber(st[3] or '0')
local ceil = tonumber(st[4] or '0')
`

// stateScript reads the hold and the AIMD state. KEYS: hold, aimd. ARGV: max, min (max 0: no AIMD).
// Reply: {hold ms, hold reason, limit, gen}.
var stateScript = redis.NewScript(`
local hold = redis.call('PTTL', KEYS[1])
local reason = ''
if hold > 0 then reason = redis.call('GET', KEYS[1]) or '' else hold = 0 end
if tonumber(ARGV[1]) <= 0 then return {hold, reason, 0, 0} end
local aimdKey = 2
` + luaAIMD + `
return {hold, reason, limit, gen}
`)

// overloadScript halves the limit if the overloaded call was admitted in the current generation.
// KEYS: aimd. ARGV: max, min, the call's gen, ttl ms. Reply: {limit, 1 if it decreased, gen}.
var overloadScript = redis.NewScript(`
local aimdKey = 1
` + luaAIMD + `
if tonumber(ARGV[3]) ~= gen then return {limit, 0, gen} end
local new = math.max(min_l, math.floor(limit / 2))
if new < limit then
  gen = gen + 1
  redis.call('HSET', KEYS[1], 'limit', new, 'gen', gen, 'ok', 0, 'ceil', limit)
else
  redis.call('HSET', KEYS[1], 'limit', new, 'gen', gen, 'ok', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {new, new < limit and 1 or 0, gen}
`)

// successScript counts a success and grows the limit by one after a run of them.
// KEYS: aimd. ARGV: max, min, probe runs, ttl ms. Reply: {limit, 1 if it grew}.
var successScript = redis.NewScript(`
local aimdKey = 1
` + luaAIMD + `
if limit >= max_l then return {limit, 0} end
ok = ok + 1
local need = limit
if limit + 1 >= ceil then need = tonumber(ARGV[3]) * limit end
if ok >= need then
  redis.call('HSET', KEYS[1], 'limit', limit + 1, 'gen', gen, 'ok', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {limit + 1, 1}
end
redis.call('HSET', KEYS[1], 'limit', limit, 'gen', gen, 'ok', ok)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {limit, 0}
`)

// State returns the service's hold and, when aimd is not nil, its effective limit and generation
// (without AIMD, Limit is 0: the caller's own max_concurrency applies). One round trip.
func (a *Adaptive) State(ctx context.Context, name string, aimd *AIMD) (State, error) {
	if err := checkAdaptiveName("state", name); err != nil {
		return State{}, err
	}
	hold, key := a.adaptiveKeys(name)
	maxL, minL := 0, 0
	if aimd != nil {
		maxL, minL = aimd.Max, max(aimd.Min, 1)
	}
	res, err := stateScript.Run(ctx, a.rdb, []string{hold, key}, maxL, minL).Slice()
	if err != nil {
		return State{}, fmt.Errorf("limiter: state %q: %w", name, err)
	}
	var v [4]int64
	for _, i := range []int{0, 2, 3} {
		if v[i], err = replyInt(res, i); err != nil {
			return State{}, fmt.Errorf("limiter: state %q: %w", name, err)
		}
	}
	reason, _ := res[1].(string)
	return State{Hold: time.Duration(v[0]) * time.Millisecond, HoldReason: reason, Limit: int(v[2]), Gen: v[3]}, nil
}

// Overloaded reports that a call admitted in generation gen was answered 429 or 503 or timed out:
// the limit halves (not below Min) unless it already decreased since that call was admitted. It
// returns the limit now and whether this report decreased it.
func (a *Adaptive) Overloaded(ctx context.Context, name string, aimd AIMD, gen int64) (int, bool, error) {
	if err := checkAdaptiveName("overloaded", name); err != nil {
		return 0, false, err
	}
	_, key := a.adaptiveKeys(name)
	res, err := overloadScript.Run(ctx, a.rdb, []string{key}, aimd.Max, max(aimd.Min, 1), gen, millis(adaptiveTTL)).Result()
	if err != nil {
		return 0, false, fmt.Errorf("limiter: overloaded %q: %w", name, err)
	}
	v, err := replyInts(res, 3)
	if err != nil {
		return 0, false, fmt.Errorf("limiter: overloaded %q: %w", name, err)
	}
	return int(v[0]), v[1] == 1, nil
}

// Succeeded reports a successful call: after a run of them the limit grows by one, never above
// Max. It returns the limit now and whether this report grew it.
func (a *Adaptive) Succeeded(ctx context.Context, name string, aimd AIMD) (int, bool, error) {
	if err := checkAdaptiveName("succeeded", name); err != nil {
		return 0, false, err
	}
	_, key := a.adaptiveKeys(name)
	res, err := successScript.Run(ctx, a.rdb, []string{key}, aimd.Max, max(aimd.Min, 1), probeRuns, millis(adaptiveTTL)).Result()
	if err != nil {
		return 0, false, fmt.Errorf("limiter: succeeded %q: %w", name, err)
	}
	v, err := replyInts(res, 2)
	if err != nil {
		return 0, false, fmt.Errorf("limiter: succeeded %q: %w", name, err)
	}
	return int(v[0]), v[1] == 1, nil
}

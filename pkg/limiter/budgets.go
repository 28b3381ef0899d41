package limiter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Budgets keeps, fleet-wide in Redis, the budgets of services: how many requests, or how many units
// of cost (tokens, say), may leave per sliding window. A call leaves only when every budget of its
// service has room, and it is recorded in all of them at once or in none (one Lua script).
//
// Each budget is a sliding-window log, as RateLimiter's: a sorted set of call IDs by the time they
// left (or were admitted, until Sent), and for a units budget a hash of the units each call counts
// with their running total, all cleaned as entries leave the window. A call reserves its estimate
// before it leaves (Reserve); Sent moves its entries to the send time; Settle replaces the estimate
// by what the answer said it cost. As long as every call's actual cost is at most what it reserved
// and each call leaves within a window of its admission, no window of length Per (by the Redis
// server clock) holds more than Limit units of calls sent.
//
// The keys of one service share the {service} hash tag, so a script over all of a service's budgets
// touches one Redis Cluster slot. A requests budget named "" keeps exactly the state RateLimiter
// keeps under the service's name: the two count in the same window.
type Budgets struct {
	rdb redis.UniversalClient
	cfg Config
}

// BudgetKind says what a budget counts.
type BudgetKind uint8

// Budget kinds.
const (
	RequestBudget BudgetKind = iota // every call counts one
	UnitBudget                      // every call counts the units it reserved, then what it cost
)

// Budget is one fleet-wide budget of a service: at most Limit requests or units per Per.
type Budget struct {
	// Name tells the budget apart from the service's others; it ends its Redis keys and may not hold
	// '{' or '}'. The empty name is the service's RateLimiter window.
	Name  string
	Kind  BudgetKind
	Limit int64
	// Per is the window. Callers that admit calls some time before they reach the service widen it
	// by that delay (the runner adds 50ms).
	Per time.Duration
}

// Ask is what a call takes from one budget: one request, or Units units. A call that reserves 0
// units still needs one free unit: a spent budget admits nothing.
type Ask struct {
	Budget
	Units int64 // ignored for a request budget; clamped to [0, Limit]
}

// Grant is a call admitted by Reserve: its entries in every budget. Pass it to Sent, Settle or
// Cancel. The zero Grant (a service without budgets) makes them no-ops.
type Grant struct {
	Service string
	ID      string
	asks    []Ask
}

// Asks returns the budgets the call was admitted by and what it reserved in each.
func (g Grant) Asks() []Ask { return g.asks }

// Denial says why Reserve admitted nothing.
type Denial struct {
	// Wait is how long until every budget would have room for the call, by the entries in it now
	// (calls settled for less, or cancelled, may free room earlier).
	Wait time.Duration
	// Budget is the index, in the asks, of the budget that needs the longest wait.
	Budget int
	// At is the Redis server time of the decision.
	At time.Time
}

// BudgetState is what is left of one budget now, for /health/services and metrics.
type BudgetState struct {
	Budget
	// Used is the requests or units counted in the window now: calls settled count their cost,
	// calls not yet settled their reservation.
	Used int64
	// Remaining is Limit - Used, never below zero.
	Remaining int64
	// Reset is when the oldest entry leaves the window (the next room that frees); 0 when empty.
	Reset time.Duration
	// Clear is when the newest entry leaves the window (the whole budget is back); 0 when empty.
	Clear time.Duration
}

// NewBudgets returns a Budgets that keeps its state in rdb.
func NewBudgets(rdb redis.UniversalClient, cfg Config) *Budgets {
	return &Budgets{rdb: rdb, cfg: cfg.WithDefaults()}
}

// BudgetsFor returns a Budgets on the same Redis client and key prefix as rate, so that a requests
// budget named "" and rate count in one window.
func BudgetsFor(rate *RateLimiter) *Budgets {
	return &Budgets{rdb: rate.rdb, cfg: rate.cfg}
}

// budgetKeys returns the keys of one budget: the log (ZSET call ID -> time µs) and the units (HASH
// call ID -> units, and the running total under "~used").
func (b *Budgets) budgetKeys(service, name string) (log, units string) {
	log = b.cfg.Prefix + "rate:{" + service + "}"
	if name != "" {
		log += ":" + name
	}
	return log, log + ":units"
}

// luaBudgets is shared by the budget scripts: budget i of the call has KEYS[2i-1] (log) and KEYS[2i]
// (units).
//
// window(i, kind, per) cleans budget i's entries that left the window and returns what it counts
// now and the time `at` its new entries take: the server time, but never before its newest entry,
// so each log stays ordered the way it was written if the server clock steps back. A units budget
// frees a bounded batch per call (later calls free the rest): until then it counts more than it
// holds, never less.
const luaBudgets = `
local function window(i, kind, per)
  local log, units = KEYS[2*i-1], KEYS[2*i]
  local at = now_us
  local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if newest[2] then at = math.max(at, tonumber(newest[2])) end
  if kind == 'r' then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', fmt(at - per))
    return redis.call('ZCARD', log), at
  end
  local gone = redis.call('ZRANGEBYSCORE', log, '-inf', fmt(at - per), 'LIMIT', 0, 500)
  if #gone > 0 then
    local u = redis.call('HMGET', units, unpack(gone))
    local freed = 0
    for j = 1, #u do freed = freed + tonumber(u[j] or 0) end
    redis.call('ZREM', log, unpack(gone))
    redis.call('HDEL', units, unpack(gone))
    redis.call('HINCRBY', units, '~used', fmt(0 - freed)) -- 0 - x: never "-0", which is no integer
  end
  if redis.call('ZCARD', log) == 0 then
    redis.call('DEL', units)
    return 0, at
  end
  return math.max(tonumber(redis.call('HGET', units, '~used') or 0), 0), at
end

-- keep makes budget i's keys outlive its newest entry (at) by its window.
local function keep(i, kind, per, at)
  local ttl = fmt(math.floor((at - now_us + per) / 1000) + 1)
  redis.call('PEXPIRE', KEYS[2*i-1], ttl)
  if kind == 'u' then redis.call('PEXPIRE', KEYS[2*i], ttl) end
end
`

// reserveScript admits a call if every budget has room for it, recording it in all of them, or in
// none. ARGV: call ID, then per budget: kind ('r' or 'u'), limit, per µs, units.
// Reply: {1, 0, 0, server time µs} or {0, wait µs, index (1-based) of the budget that waits longest,
// server time µs}.
var reserveScript = redis.NewScript(luaNow + luaBudgets + `
local id = ARGV[1]
local nb = #KEYS / 2
local at = {}
local wait, worst = 0, 0
for i = 1, nb do
  local a = 1 + (i - 1) * 4
  local kind, limit, per, units = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local used, t = window(i, kind, per)
  at[i] = t
  local need = math.min(math.max(units, 1), limit)
  local excess = used + need - limit
  if excess > 0 then
    -- How long until the oldest entries that hold the excess leave the window.
    local w = per
    if kind == 'r' then
      local e = redis.call('ZRANGE', KEYS[2*i-1], excess - 1, excess - 1, 'WITHSCORES')
      if e[2] then w = tonumber(e[2]) + per - now_us end
    else
      local start, found = 0, false
      while not found do
        local e = redis.call('ZRANGE', KEYS[2*i-1], start, start + 99, 'WITHSCORES')
        if #e == 0 then break end
        local ids = {}
        for j = 1, #e, 2 do ids[#ids + 1] = e[j] end
        local u = redis.call('HMGET', KEYS[2*i], unpack(ids))
        for j = 1, #ids do
          excess = excess - tonumber(u[j] or 0)
          if excess <= 0 then
            w = tonumber(e[2*j]) + per - now_us
            found = true
            break
          end
        end
        start = start + 100
      end
    end
    w = math.max(w, 1)
    if w > wait then wait, worst = w, i end
  end
end
if wait > 0 then return {0, fmt(wait), worst, fmt(now_us)} end
for i = 1, nb do
  local a = 1 + (i - 1) * 4
  local kind, limit, per, units = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  redis.call('ZADD', KEYS[2*i-1], fmt(at[i]), id)
  if kind == 'u' then
    units = math.min(math.max(units, 0), limit)
    redis.call('HSET', KEYS[2*i], id, fmt(units))
    redis.call('HINCRBY', KEYS[2*i], '~used', fmt(units))
  end
  keep(i, kind, per, at[i])
end
return {1, 0, 0, fmt(now_us)}
`)

// sentScript moves a call's entries to the current time; an entry that already left its window
// comes back with the units it reserved. ARGV: call ID, then per budget: kind, per µs, units.
// Reply: the server time µs.
var budgetSentScript = redis.NewScript(luaNow + luaBudgets + `
local id = ARGV[1]
for i = 1, #KEYS / 2 do
  local a = 1 + (i - 1) * 3
  local kind, per, units = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local _, at = window(i, kind, per)
  local had = redis.call('ZSCORE', KEYS[2*i-1], id)
  redis.call('ZADD', KEYS[2*i-1], fmt(at), id)
  if kind == 'u' and not had then
    redis.call('HSET', KEYS[2*i], id, fmt(units))
    redis.call('HINCRBY', KEYS[2*i], '~used', fmt(units))
  end
  keep(i, kind, per, at)
end
return fmt(now_us)
`)

// settleScript records that a call was answered now: while its entry is in a window (after that it
// counts nowhere), the entry moves to now (the provider counted the call when it arrived, which was
// before its answer: a window counted from the answer never ends before the provider's does), and
// in a units budget its reservation is replaced by its cost. ARGV: call ID, then per budget: kind,
// per µs, cost (-1: keep the reservation).
var settleScript = redis.NewScript(luaNow + luaBudgets + `
local id = ARGV[1]
for i = 1, #KEYS / 2 do
  local a = 1 + (i - 1) * 3
  local kind, per, cost = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local had = redis.call('ZSCORE', KEYS[2*i-1], id)
  if had and tonumber(had) < now_us then
    redis.call('ZADD', KEYS[2*i-1], fmt(now_us), id)
    keep(i, kind, per, now_us)
  end
  if had and kind == 'u' and cost >= 0 then
    local old = redis.call('HGET', KEYS[2*i], id)
    if old then
      redis.call('HSET', KEYS[2*i], id, fmt(cost))
      redis.call('HINCRBY', KEYS[2*i], '~used', fmt(cost - tonumber(old)))
    end
  end
end
return 1
`)

// cancelScript removes a call's entries (it never left). ARGV: call ID, then per budget: kind.
var cancelScript = redis.NewScript(`
local id = ARGV[1]
for i = 1, #KEYS / 2 do
  if redis.call('ZREM', KEYS[2*i-1], id) == 1 and ARGV[i + 1] == 'u' then
    local old = redis.call('HGET', KEYS[2*i], id)
    if old then
      redis.call('HDEL', KEYS[2*i], id)
      redis.call('HINCRBY', KEYS[2*i], '~used', string.format('%.0f', 0 - tonumber(old)))
    end
  end
end
return 1
`)

// remainingScript reads each budget after cleaning it. ARGV: per budget: kind, per µs.
// Reply: per budget used, µs until the oldest entry leaves, µs until the newest does.
var remainingScript = redis.NewScript(luaNow + luaBudgets + `
local out = {}
for i = 1, #KEYS / 2 do
  local kind, per = ARGV[2*i-1], tonumber(ARGV[2*i])
  local used = window(i, kind, per)
  local oldest = redis.call('ZRANGE', KEYS[2*i-1], 0, 0, 'WITHSCORES')
  local newest = redis.call('ZRANGE', KEYS[2*i-1], -1, -1, 'WITHSCORES')
  local reset, clear = 0, 0
  if oldest[2] then reset = math.max(tonumber(oldest[2]) + per - now_us, 0) end
  if newest[2] then clear = math.max(tonumber(newest[2]) + per - now_us, 0) end
  out[#out + 1] = fmt(used)
  out[#out + 1] = fmt(reset)
  out[#out + 1] = fmt(clear)
end
return out
`)

func kindArg(k BudgetKind) string {
	if k == UnitBudget {
		return "u"
	}
	return "r"
}

// check refuses names that would break the shared hash tag of a service's keys, and budgets no
// script could honour.
func (b *Budgets) check(op, service string, budgets []Budget) error {
	if err := checkName(op, service); err != nil {
		return err
	}
	for _, bg := range budgets {
		switch {
		case strings.ContainsAny(bg.Name, "{}"):
			return fmt.Errorf("limiter: %s %q: budget name %q may not contain '{' or '}'", op, service, bg.Name)
		case bg.Limit <= 0:
			return fmt.Errorf("limiter: %s %q: budget %q has limit %d, want at least 1", op, service, bg.Name, bg.Limit)
		case bg.Per < time.Millisecond:
			return fmt.Errorf("limiter: %s %q: budget %q has window %s, want at least 1ms", op, service, bg.Name, bg.Per)
		}
	}
	return nil
}

func (b *Budgets) keysOf(service string, asks []Ask) []string {
	keys := make([]string, 0, 2*len(asks))
	for _, a := range asks {
		log, units := b.budgetKeys(service, a.Name)
		keys = append(keys, log, units)
	}
	return keys
}

func budgetsOf(asks []Ask) []Budget {
	out := make([]Budget, len(asks))
	for i, a := range asks {
		out[i] = a.Budget
	}
	return out
}

// Reserve admits a call to service if every budget of asks has room for what it asks, and records
// it in all of them at once; otherwise it records nothing and says how long until they all would
// have room. No asks: admitted without a Redis call.
func (b *Budgets) Reserve(ctx context.Context, service string, asks []Ask) (Grant, *Denial, error) {
	if len(asks) == 0 {
		return Grant{Service: service}, nil, nil
	}
	if err := b.check("reserve", service, budgetsOf(asks)); err != nil {
		return Grant{}, nil, err
	}
	g := Grant{Service: service, ID: uuid.NewString(), asks: make([]Ask, len(asks))}
	args := make([]any, 0, 1+4*len(asks))
	args = append(args, g.ID)
	for i, a := range asks {
		if a.Kind == RequestBudget {
			a.Units = 1
		}
		a.Units = min(max(a.Units, 0), a.Limit)
		g.asks[i] = a
		args = append(args, kindArg(a.Kind), a.Limit, a.Per.Microseconds(), a.Units)
	}
	res, err := reserveScript.Run(ctx, b.rdb, b.keysOf(service, asks), args...).Result()
	if err != nil {
		return Grant{}, nil, fmt.Errorf("limiter: reserve %q: %w", service, err)
	}
	v, err := replyInts(res, 4)
	if err != nil {
		return Grant{}, nil, fmt.Errorf("limiter: reserve %q: %w", service, err)
	}
	if v[0] != 1 {
		return Grant{}, &Denial{Wait: time.Duration(v[1]) * time.Microsecond, Budget: int(v[2]) - 1, At: time.UnixMicro(v[3])}, nil
	}
	return g, nil, nil
}

// Sent records that the call of g leaves now: its entries move from their admission time to now, so
// calls admitted later are spaced from the actual send. An entry that already left its window comes
// back with what it reserved.
func (b *Budgets) Sent(ctx context.Context, g Grant) error {
	_, err := b.sent(ctx, g)
	return err
}

// sent is Sent that also returns the server time the entries were moved to.
func (b *Budgets) sent(ctx context.Context, g Grant) (time.Time, error) {
	if g.ID == "" {
		return time.Time{}, nil
	}
	args := make([]any, 0, 1+3*len(g.asks))
	args = append(args, g.ID)
	for _, a := range g.asks {
		args = append(args, kindArg(a.Kind), a.Per.Microseconds(), a.Units)
	}
	us, err := budgetSentScript.Run(ctx, b.rdb, b.keysOf(g.Service, g.asks), args...).Text()
	if err != nil {
		return time.Time{}, fmt.Errorf("limiter: sent %q: %w", g.Service, err)
	}
	n, err := strconv.ParseInt(us, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("limiter: sent %q: %w", g.Service, err)
	}
	return time.UnixMicro(n), nil
}

// Settle records that the call of g was answered (or given up after it left) now: its entries move
// to now, since the provider counted the call when it arrived, which was before now, and in its
// units budgets it counts what it cost, costs[i] for budget i of the grant (nil, or a negative cost,
// keeps the reservation: the cost is unknown). A call whose entry already left a window counts
// there no more. Request budgets ignore their cost.
func (b *Budgets) Settle(ctx context.Context, g Grant, costs []int64) error {
	if g.ID == "" {
		return nil
	}
	if costs != nil && len(costs) != len(g.asks) {
		return fmt.Errorf("limiter: settle %q: %d costs for %d budgets", g.Service, len(costs), len(g.asks))
	}
	args := make([]any, 0, 1+3*len(g.asks))
	args = append(args, g.ID)
	for i, a := range g.asks {
		c := int64(-1)
		if i < len(costs) && a.Kind == UnitBudget && costs[i] >= 0 {
			c = min(costs[i], MaxBudgetUnits)
		}
		args = append(args, kindArg(a.Kind), a.Per.Microseconds(), c)
	}
	if err := settleScript.Run(ctx, b.rdb, b.keysOf(g.Service, g.asks), args...).Err(); err != nil {
		return fmt.Errorf("limiter: settle %q: %w", g.Service, err)
	}
	return nil
}

// MaxBudgetUnits is the largest cost Settle records: the scripts count in Lua numbers (doubles).
const MaxBudgetUnits = 1 << 50

// Cancel gives back everything the call of g reserved: it never left (its step was claimed by
// another worker, or its leases were lost before sending).
func (b *Budgets) Cancel(ctx context.Context, g Grant) error {
	if g.ID == "" {
		return nil
	}
	args := make([]any, 0, 1+len(g.asks))
	args = append(args, g.ID)
	for _, a := range g.asks {
		args = append(args, kindArg(a.Kind))
	}
	if err := cancelScript.Run(ctx, b.rdb, b.keysOf(g.Service, g.asks), args...).Err(); err != nil {
		return fmt.Errorf("limiter: cancel %q: %w", g.Service, err)
	}
	return nil
}

// Remaining returns what is left of each budget of service now (in the order given), and when its
// oldest and newest entries leave the window, by the Redis server clock.
func (b *Budgets) Remaining(ctx context.Context, service string, budgets []Budget) ([]BudgetState, error) {
	if len(budgets) == 0 {
		return nil, nil
	}
	if err := b.check("remaining", service, budgets); err != nil {
		return nil, err
	}
	asks := make([]Ask, len(budgets))
	args := make([]any, 0, 2*len(budgets))
	for i, bg := range budgets {
		asks[i] = Ask{Budget: bg}
		args = append(args, kindArg(bg.Kind), bg.Per.Microseconds())
	}
	res, err := remainingScript.Run(ctx, b.rdb, b.keysOf(service, asks), args...).Result()
	if err != nil {
		return nil, fmt.Errorf("limiter: remaining %q: %w", service, err)
	}
	v, err := replyInts(res, 3*len(budgets))
	if err != nil {
		return nil, fmt.Errorf("limiter: remaining %q: %w", service, err)
	}
	out := make([]BudgetState, len(budgets))
	for i, bg := range budgets {
		used := v[3*i]
		out[i] = BudgetState{
			Budget: bg, Used: used, Remaining: max(bg.Limit-used, 0),
			Reset: time.Duration(v[3*i+1]) * time.Microsecond, Clear: time.Duration(v[3*i+2]) * time.Microsecond,
		}
	}
	return out, nil
}

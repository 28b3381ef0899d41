package limiter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// FairQueue holds the steps that wait for a saturated service beyond the few its workers keep in
// their wait rooms ("parked" steps), fleet-wide in Redis, and hands them out when the service has
// room again: round-robin by tenant, weighted, and first come first served within a tenant. Without
// it, one tenant's backlog of thousands of steps would sit ahead of every other tenant's step in the
// task queue.
//
// The order between tenants is stride scheduling: every tenant with parked steps has a pass; the
// tenant with the lowest pass is served next and its pass grows by its stride (a constant divided by
// its weight), so over time tenants are served in proportion to their weights. A tenant that starts
// waiting joins at the pass of the tenant served last, with no credit for the time it did not wait:
// its first step is served within one round.
//
// A parked step is only an entry (an opaque value, for CAO the task to run) whose owner keeps a
// fallback. Unpark hands an entry out and keeps it as handed out until the step says it got in
// (Remove) or waits again (Park); Overdue returns the entries handed out longer than HandOutTTL ago,
// whose hand-out may have been lost with the process that made it, to hand them out again. An entry
// lost with Redis is the owner's to recover.
type FairQueue struct {
	rdb redis.UniversalClient
	cfg Config
}

// Parked is one waiting step of a FairQueue.
type Parked struct {
	// ID identifies the step: parking it again keeps its place.
	ID string
	// Tenant is whose step it is.
	Tenant string
	// Since is when the step first waited: its place among its tenant's parked steps. Zero: now.
	Since time.Time
	// Value is what Unpark hands back for the step (for CAO, the task to run).
	Value string
}

// strideUnit is the stride of a tenant of weight 1.
const strideUnit = 1_000_000

// parkTTL bounds how long an abandoned queue lingers in Redis; every Park renews it.
const parkTTL = 24 * time.Hour

// NewFairQueue returns a FairQueue that keeps its state in rdb.
func NewFairQueue(rdb redis.UniversalClient, cfg Config) *FairQueue {
	return &FairQueue{rdb: rdb, cfg: cfg.WithDefaults()}
}

// fairKeys are the Redis keys of one service's queue; they share the semaphore's {service} hash tag
// (one cluster slot, which the semaphore's acquire script relies on: it reads rr).
type fairKeys struct {
	rr      string // ZSET tenant -> pass, the tenants with parked steps
	stride  string // HASH tenant -> stride
	vt      string // STRING the pass of the tenant served last
	entries string // HASH step ID -> tenant "\n" value
	handed  string // ZSET step ID -> when its hand-out is overdue, ms
	tenant  string // prefix of the per-tenant ZSETs step ID -> since µs
}

// HandOutTTL is how long a step handed out by Unpark may take to get in (Remove) or wait again
// (Park) before Overdue returns it.
const HandOutTTL = 10 * time.Second

func (q *FairQueue) keys(service string) fairKeys {
	return fairKeysFor(q.cfg.Prefix, service)
}

func fairKeysFor(prefix, service string) fairKeys {
	base := prefix + "park:{" + service + "}:"
	return fairKeys{rr: base + "rr", stride: base + "stride", vt: base + "vt", entries: base + "entries", handed: base + "handed", tenant: base + "t:"}
}

// luaHandOut is shared by the scripts that hand steps out: handOut(handed, entries, id, ttl, out)
// marks step id as handed out until now+ttl ms and appends its ID and value to out; it returns false
// when the step has no entry (it is then forgotten).
const luaHandOut = `
local function handOut(handed, entries, id, ttl, out)
  local e = redis.call('HGET', entries, id)
  if not e then
    redis.call('ZREM', handed, id)
    return false
  end
  redis.call('ZADD', handed, fmt(now + ttl), id)
  local _, nl = string.find(e, '\n', 1, true)
  out[#out + 1] = id
  out[#out + 1] = string.sub(e, nl + 1)
  return true
end
`

// parkScript adds a step to its tenant's queue, keeping its place if it is there already.
// KEYS: rr, stride, vt, entries, the tenant's ZSET, handed. ARGV: step ID, tenant, since µs (0: now),
// stride, value, ttl ms. Reply: the tenant's parked steps.
var parkScript = redis.NewScript(luaNow + `
local since = tonumber(ARGV[3])
if since <= 0 then since = now_us end
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', fmt(since), ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2] .. '\n' .. ARGV[5])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], redis.call('GET', KEYS[3]) or '0', ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return redis.call('ZCARD', KEYS[5])
`)

// unparkScript hands out up to n parked steps, the lowest pass first; a tenant that holds its whole
// share of the service (its tenant semaphore) is passed over this time. KEYS: rr, stride, vt,
// entries, handed. ARGV: the per-tenant ZSET prefix, n, the semaphore key prefix of tenant limits
// ("" for none), the tenant limit, ttl ms, hand-out TTL ms.
// Reply: a flat list of step ID, value of the steps handed out, in order.
//
// The per-tenant ZSETs and tenant semaphores are named here from the tenant, not passed in KEYS: they
// share the {service} hash tag of KEYS, so they live in the same cluster slot.
var unparkScript = redis.NewScript(luaNow + luaHandOut + `
local n = tonumber(ARGV[2])
local cap = tonumber(ARGV[4])
local out = {}
local vt = redis.call('GET', KEYS[3])
local function full(t)
  if ARGV[3] == '' or cap <= 0 then return false end
  return redis.call('ZCOUNT', ARGV[3] .. t .. ':holders', '(' .. fmt(now), '+inf') >= cap
end
local tenants = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local i = 1
while #out < 2 * n and i < #tenants do
  local t, pass = tenants[i], tonumber(tenants[i + 1])
  local tk = ARGV[1] .. t
  local head = redis.call('ZRANGE', tk, 0, 0)
  if not head[1] then
    redis.call('ZREM', KEYS[1], t)
    redis.call('HDEL', KEYS[2], t)
    i = i + 2
  elseif full(t) then
    i = i + 2
  else
    local id = head[1]
    redis.call('ZREM', tk, id)
    handOut(KEYS[5], KEYS[4], id, tonumber(ARGV[6]), out)
    vt = fmt(pass)
    local np = pass + tonumber(redis.call('HGET', KEYS[2], t) or '` + strconv.Itoa(strideUnit) + `')
    if redis.call('ZCARD', tk) == 0 then
      redis.call('ZREM', KEYS[1], t)
      redis.call('HDEL', KEYS[2], t)
      i = i + 2
    else
      redis.call('ZADD', KEYS[1], fmt(np), t)
      -- Serve the tenants in pass order again: this one may still be the lowest.
      tenants = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
      i = 1
    end
  end
end
if vt then redis.call('SET', KEYS[3], vt, 'PX', ARGV[5]) end
if #out > 0 then redis.call('PEXPIRE', KEYS[5], ARGV[5]) end
return out
`)

// removeScript forgets a step: its place in its tenant's queue, or its hand-out. KEYS: rr, stride,
// entries, the tenant's ZSET, handed. ARGV: step ID, tenant. Reply: 1 if it was parked.
var removeScript = redis.NewScript(`
local n = redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('ZCARD', KEYS[4]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return n
`)

// Park adds step p to service's queue with weight (below 1 counts as 1), or keeps its place if it is
// parked already (its value is updated). It returns how many steps p's tenant has parked.
func (q *FairQueue) Park(ctx context.Context, service string, p Parked, weight int) (int, error) {
	if err := checkName("park", service); err != nil {
		return 0, err
	}
	if p.ID == "" || p.Tenant == "" || strings.Contains(p.Tenant, "\n") {
		return 0, fmt.Errorf("limiter: park %q: a parked step needs an ID and a one-line tenant", service)
	}
	k := q.keys(service)
	var since int64
	if !p.Since.IsZero() {
		since = p.Since.UnixMicro()
	}
	n, err := parkScript.Run(ctx, q.rdb, []string{k.rr, k.stride, k.vt, k.entries, k.tenant + p.Tenant, k.handed},
		p.ID, p.Tenant, since, strideUnit/max(weight, 1), p.Value, millis(parkTTL)).Int()
	if err != nil {
		return 0, fmt.Errorf("limiter: park %q: %w", service, err)
	}
	return n, nil
}

// Unpark hands out up to n parked steps of service, fairly between tenants: they leave the queue
// and are kept as handed out (see Overdue) until Remove or Park. With
// perTenant > 0, a tenant that holds perTenant slots of the tenant semaphores of service (see
// TenantSemaphore) is passed over.
func (q *FairQueue) Unpark(ctx context.Context, service string, n, perTenant int) ([]Handout, error) {
	if err := checkName("unpark", service); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, nil
	}
	k := q.keys(service)
	semPrefix := ""
	if perTenant > 0 {
		semPrefix = q.cfg.Prefix + "sem:{" + service + "}:" + tenantSub
	}
	res, err := unparkScript.Run(ctx, q.rdb, []string{k.rr, k.stride, k.vt, k.entries, k.handed},
		k.tenant, n, semPrefix, perTenant, millis(parkTTL), millis(HandOutTTL)).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("limiter: unpark %q: %w", service, err)
	}
	return handouts(res), nil
}

// Remove takes step id of tenant out of service's queue (a step that got its slot another way). It
// reports whether the step was parked.
func (q *FairQueue) Remove(ctx context.Context, service, tenant, id string) (bool, error) {
	if err := checkName("unpark", service); err != nil {
		return false, err
	}
	k := q.keys(service)
	n, err := removeScript.Run(ctx, q.rdb, []string{k.rr, k.stride, k.entries, k.tenant + tenant, k.handed}, id, tenant).Int()
	if err != nil {
		return false, fmt.Errorf("limiter: unpark %q: %w", service, err)
	}
	return n == 1, nil
}

// Waiting returns how many steps of service are parked, per tenant with any.
func (q *FairQueue) Waiting(ctx context.Context, service string) (map[string]int, error) {
	if err := checkName("waiting", service); err != nil {
		return nil, err
	}
	k := q.keys(service)
	tenants, err := q.rdb.ZRange(ctx, k.rr, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("limiter: waiting %q: %w", service, err)
	}
	out := make(map[string]int, len(tenants))
	if len(tenants) == 0 {
		return out, nil
	}
	pipe := q.rdb.Pipeline()
	cards := make([]*redis.IntCmd, len(tenants))
	for i, t := range tenants {
		cards[i] = pipe.ZCard(ctx, k.tenant+t)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("limiter: waiting %q: %w", service, err)
	}
	for i, t := range tenants {
		if n := int(cards[i].Val()); n > 0 {
			out[t] = n
		}
	}
	return out, nil
}

// FairQueueFor returns the FairQueue of sem's services, on its Redis and key prefix.
func FairQueueFor(sem *Semaphore) *FairQueue { return &FairQueue{rdb: sem.rdb, cfg: sem.cfg} }

// Any reports whether service has parked steps.
func (q *FairQueue) Any(ctx context.Context, service string) (bool, error) {
	n, err := q.rdb.Exists(ctx, q.keys(service).rr).Result()
	if err != nil {
		return false, fmt.Errorf("limiter: parked %q: %w", service, err)
	}
	return n == 1, nil
}

// overdueScript returns the steps handed out whose hand-out is overdue, and gives each another
// hand-out TTL. KEYS: handed, entries. ARGV: n, hand-out TTL ms. Reply: a flat list of step ID, value.
var overdueScript = redis.NewScript(luaNow + luaHandOut + `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do handOut(KEYS[1], KEYS[2], id, tonumber(ARGV[2]), out) end
return out
`)

// Handout is a step handed out by Unpark (or, overdue, by Overdue).
type Handout struct {
	ID    string // the step's ID (Parked.ID)
	Value string // its value (Parked.Value)
}

// Overdue returns up to n steps of service handed out more than HandOutTTL ago that neither got in
// (Remove) nor wait again (Park): the process that handed them out may have died before it could.
// Each gets another HandOutTTL.
func (q *FairQueue) Overdue(ctx context.Context, service string, n int) ([]Handout, error) {
	if err := checkName("overdue", service); err != nil {
		return nil, err
	}
	k := q.keys(service)
	res, err := overdueScript.Run(ctx, q.rdb, []string{k.handed, k.entries}, n, millis(HandOutTTL)).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("limiter: overdue %q: %w", service, err)
	}
	return handouts(res), nil
}

// handouts reads a flat script reply of step ID, value pairs.
func handouts(res []string) []Handout {
	out := make([]Handout, 0, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		out = append(out, Handout{ID: res[i], Value: res[i+1]})
	}
	return out
}

// Forget drops step id of service, handed out, whose hand-out cannot be made (its task is gone).
func (q *FairQueue) Forget(ctx context.Context, service, id string) error {
	if err := checkName("forget", service); err != nil {
		return err
	}
	k := q.keys(service)
	pipe := q.rdb.TxPipeline()
	pipe.ZRem(ctx, k.handed, id)
	pipe.HDel(ctx, k.entries, id)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("limiter: forget %q: %w", service, err)
	}
	return nil
}

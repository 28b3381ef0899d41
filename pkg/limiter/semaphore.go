package limiter

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
)

// Lease is one slot of a semaphore, held until ExpiresAt unless renewed or released.
type Lease struct {
	// Name is the semaphore the lease belongs to.
	Name string
	// ID identifies the lease; it is unique across all leases.
	ID string
	// Token is a fencing token, strictly increasing per semaphore across all workers; a resource that
	// records the highest token it has seen can reject a holder whose lease was lost. Zero for a lease of
	// an unlimited semaphore.
	Token int64
	// ExpiresAt is when the lease stops being held, by the Redis server clock. Zero for a lease of an
	// unlimited semaphore, which never expires.
	ExpiresAt time.Time
	// RequestedAt is this process's clock just before it sent the request that granted the lease:
	// by the local clock the lease is surely held until RequestedAt plus its TTL (the holder of a
	// lease checks this before using it, in case the process was stopped in between).
	RequestedAt time.Time
	// limit is the semaphore's limit when the lease was taken: Release wakes as many waiters as there
	// are free slots by it.
	limit int
}

// Semaphore caps how many callers across the fleet hold a slot of a named resource at once. Slots are
// leases that expire unless renewed, so a crashed worker's slot comes back by itself, and callers that
// poll with a stable waiter ID are served in the order they started waiting.
type Semaphore struct {
	rdb  redis.UniversalClient
	cfg  Config
	wake string // the wake channel
}

// NewSemaphore returns a Semaphore that keeps its state in rdb.
func NewSemaphore(rdb redis.UniversalClient, cfg Config) *Semaphore {
	cfg = cfg.WithDefaults()
	return &Semaphore{rdb: rdb, cfg: cfg, wake: pubsub.Channel(rdb, cfg.Prefix, wakeChannelName)}
}

// semKeys are the Redis keys of one semaphore. They share the {name} hash tag so the scripts, which
// take several of them, work on Redis Cluster: all keys of one script call hash to one slot. For the
// tag to be the one Redis hashes, names may not contain '{' or '}' (checkName) and Config.Prefix may
// not contain an empty "{}".
type semKeys struct {
	holders string // ZSET lease ID -> expiry, ms since the epoch
	fence   string // STRING last fencing token issued
	waiters string // ZSET waiter ID -> queue position (first wait time, µs, made unique)
	seen    string // ZSET waiter ID -> last Acquire, ms since the epoch
	// hand holds the waiters that take a slot handed to them by a release: waiter ID -> "limit ttl"
	// (ms), the limit they wait under and the TTL of the lease they want.
	hand string // HASH
	// handed holds the slots handed to waiters that have not polled since: waiter ID -> "lease ID
	// limit". A waiter whose wake-up was lost finds its lease here; one that gives up returns it.
	handed string // HASH
	// hold is the service's hold (Adaptive.Hold): while it lasts, a release hands no slot.
	hold string
}

// keyList returns the keys in the order the scripts take them (KEYS[1..7]).
func (k semKeys) keyList() []string {
	return []string{k.holders, k.fence, k.waiters, k.seen, k.hand, k.handed, k.hold}
}

// checkName refuses a semaphore name that would break its keys' shared hash tag: an empty one, or one
// with a brace ("}x" would make the tag "{}", and Redis would hash each whole key to its own slot).
func checkName(op, name string) error {
	if name == "" {
		return fmt.Errorf("limiter: %s: empty semaphore name", op)
	}
	if strings.ContainsAny(name, "{}") {
		return fmt.Errorf("limiter: %s %q: a semaphore name may not contain '{' or '}'", op, name)
	}
	if svc, sub, ok := strings.Cut(name, "|"); ok && (svc == "" || sub == "") {
		return fmt.Errorf("limiter: %s %q: both parts of a two-part semaphore name must be set", op, name)
	}
	return nil
}

// tenantSub starts the second part of the name of a tenant's semaphore within a service.
const tenantSub = "t:"

// TenantSemaphore is the name of tenant's share of service's semaphore (max_concurrency_per_tenant):
// a semaphore of its own whose keys share the service's hash tag.
func TenantSemaphore(service, tenant string) string { return service + "|" + tenantSub + tenant }

// A semaphore name may have two parts, "service|sub": a semaphore within service (one tenant's or one
// key's share of it, see TenantSemaphore). Its keys share service's hash tag, so scripts about the
// service may read them.
func (s *Semaphore) keys(name string) semKeys {
	svc, sub, _ := strings.Cut(name, "|")
	base := s.cfg.Prefix + "sem:{" + svc + "}:"
	if sub != "" {
		base += sub + ":"
	}
	return semKeys{holders: base + "holders", fence: base + "fence", waiters: base + "waiters", seen: base + "seen",
		hand: base + "hand", handed: base + "handed", hold: adaptiveHoldKey(s.cfg.Prefix, svc)}
}

// luaNow is shared by the scripts: the server clock in µs and ms, and integer formatting that stays
// exact for µs timestamps on both Redis and gopher-lua (tostring would switch to exponent notation).
const luaNow = `
if redis.replicate_commands then redis.replicate_commands() end
local function fmt(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
`

// acquireScript takes a slot if one is free for this waiter, or records the waiter's place in the
// queue (and, when it takes handed slots, its limit and TTL in hand). A waiter that a release handed a
// slot since its last call gets that lease. KEYS: keyList. ARGV: limit, ttl ms, lease ID, waiter ID
// ("" for none), waiter TTL ms, fence TTL ms, "1" when the waiter takes handed slots.
// Reply: {1, token, expiry ms} when granted, {2, token, expiry ms, lease ID} for a handed slot,
// {0, slots in use, live waiters ahead} when full.
var acquireScript = redis.NewScript(luaNow + `
local limit = tonumber(ARGV[1])
local wid = ARGV[4]
local wttl = tonumber(ARGV[5])

-- Reclaim expired leases.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))

-- A slot handed to this waiter by a release whose wake-up it missed.
if wid ~= '' then
  local h = redis.call('HGET', KEYS[6], wid)
  if h then
    redis.call('HDEL', KEYS[6], wid)
    local hid = string.match(h, '^(%S+)')
    local exp = redis.call('ZSCORE', KEYS[1], hid)
    if exp then return {2, string.match(hid, '^h(%d+)|'), fmt(tonumber(exp)), hid} end
  end
end

-- Forget waiters that stopped polling; a bounded batch keeps the script short, later calls finish.
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(now - wttl), 'LIMIT', 0, 100)
if #stale > 0 then
  redis.call('ZREM', KEYS[3], unpack(stale))
  redis.call('ZREM', KEYS[4], unpack(stale))
  redis.call('HDEL', KEYS[5], unpack(stale))
end
-- Forget handed slots whose holder never released them (it crashed): at most one per lease is live.
if redis.call('HLEN', KEYS[6]) > 2 * redis.call('ZCARD', KEYS[1]) + 16 then
  local all = redis.call('HGETALL', KEYS[6])
  for i = 1, #all, 2 do
    if not redis.call('ZSCORE', KEYS[1], string.match(all[i + 1], '^(%S+)')) then
      redis.call('HDEL', KEYS[6], all[i])
    end
  end
end

local used = redis.call('ZCARD', KEYS[1])
local rank = false
if wid ~= '' then rank = redis.call('ZRANK', KEYS[3], wid) end
local ahead = rank
if not rank then ahead = redis.call('ZCARD', KEYS[3]) end

if limit - used > ahead then
  local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
  local token = math.max(prev + 1, now_us)
  redis.call('SET', KEYS[2], fmt(token), 'PX', ARGV[6])
  local exp = now + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], fmt(exp), ARGV[3])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], fmt(tonumber(last[2]) - now))
  if rank then
    redis.call('ZREM', KEYS[3], wid)
    redis.call('ZREM', KEYS[4], wid)
    redis.call('HDEL', KEYS[5], wid)
  end
  return {1, fmt(token), fmt(exp)}
end

if wid ~= '' then
  if not rank then
    local pos = now_us
    local tail = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
    if tail[2] then pos = math.max(pos, tonumber(tail[2]) + 1) end
    redis.call('ZADD', KEYS[3], fmt(pos), wid)
  end
  redis.call('ZADD', KEYS[4], fmt(now), wid)
  if ARGV[7] == '1' then
    redis.call('HSET', KEYS[5], wid, ARGV[1] .. ' ' .. ARGV[2])
    redis.call('PEXPIRE', KEYS[5], ARGV[5])
  else
    redis.call('HDEL', KEYS[5], wid)
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {0, used, ahead}
`)

// renewScript moves the expiry of a lease still held to now+ttl.
// KEYS: holders. ARGV: lease ID, ttl ms. Reply: {1, expiry ms} or {0, 0} when the lease is not held.
var renewScript = redis.NewScript(luaNow + `
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not exp then return {0, 0} end
if tonumber(exp) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {0, 0}
end
local newexp = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], fmt(newexp), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], fmt(tonumber(last[2]) - now))
return {1, fmt(newexp)}
`)

// luaServe gives the slots free after a release to the head of the queue, in order, and tells
// them on the wake channel before the script answers (parseWake), so a freed slot does not wait for
// the releaser's next round trip. A waiter that takes handed slots (hand) and polled within the
// waiter TTL gets its lease here, made as acquireScript makes one, and is told it, unless the
// service is on hold (then no slot is handed: the woken waiters find the hold themselves); any
// other is woken to take its slot itself, for as many as are free by limit. Serving stops at the first
// waiter that may not have a slot yet, as acquireScript's rule (limit - used > waiters ahead) says.
// serve(limit, channel, semaphore name, waiter TTL ms, fence TTL ms) uses KEYS as keyList.
const luaServe = `
local function serve(limit, channel, name, wttl, fttl)
  local used = redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now), '+inf')
  local ids = redis.call('ZRANGE', KEYS[3], 0, math.max(limit, 1) + 15)
  local lines, woken, maxexp = {}, 0, 0
  local held = redis.call('PTTL', KEYS[7]) > 0
  for _, wid in ipairs(ids) do
    local h = false
    if not held then h = redis.call('HGET', KEYS[5], wid) end
    if h then
      local seen = redis.call('ZSCORE', KEYS[4], wid)
      local wlim, wms = string.match(h, '^(%d+) (%d+)$')
      if not seen or tonumber(seen) < now - wttl or not wlim then
        redis.call('ZREM', KEYS[3], wid)
        redis.call('ZREM', KEYS[4], wid)
        redis.call('HDEL', KEYS[5], wid)
      else
        if tonumber(wlim) - used <= woken then break end
        local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
        local token = math.max(prev + 1, now_us)
        redis.call('SET', KEYS[2], fmt(token), 'PX', fttl)
        local id = 'h' .. fmt(token) .. '|' .. wid
        local exp = now + tonumber(wms)
        redis.call('ZADD', KEYS[1], fmt(exp), id)
        redis.call('ZREM', KEYS[3], wid)
        redis.call('ZREM', KEYS[4], wid)
        redis.call('HDEL', KEYS[5], wid)
        redis.call('HSET', KEYS[6], wid, id .. ' ' .. wlim)
        used = used + 1
        maxexp = math.max(maxexp, exp)
        lines[#lines + 1] = wid .. ' ' .. id .. ' ' .. fmt(token) .. ' ' .. fmt(exp)
      end
    else
      if limit - used <= woken then break end
      woken = woken + 1
      lines[#lines + 1] = wid
    end
  end
  if maxexp > 0 then
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    local ttl = fmt(math.max(tonumber(last[2]), maxexp) - now)
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[6], ttl)
  end
  if #lines > 0 then
    redis.call('PUBLISH', channel, name .. '\n' .. table.concat(lines, '\n'))
  end
end
`

// releaseScript removes one lease (and, for a handed one, its entry in handed) and serves the queue
// (luaServe). KEYS: keyList. ARGV: lease ID, limit, wake channel, semaphore name, waiter TTL ms,
// fence TTL ms. Reply: {1 if the lease was still held else 0}.
var releaseScript = redis.NewScript(luaNow + luaServe + `
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
local held = 0
if exp then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if tonumber(exp) > now then held = 1 end
end
local hw = string.match(ARGV[1], '^h%d+|(.+)$')
if hw then redis.call('HDEL', KEYS[6], hw) end
serve(tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6])
return {held}
`)

// leaveScript removes a waiter from the queue and gives back a slot handed to it that it has not
// taken (serving the queue with it, luaServe). KEYS: keyList. ARGV: waiter ID, wake channel,
// semaphore name, waiter TTL ms, fence TTL ms.
var leaveScript = redis.NewScript(luaNow + luaServe + `
local wid = ARGV[1]
redis.call('ZREM', KEYS[3], wid)
redis.call('ZREM', KEYS[4], wid)
redis.call('HDEL', KEYS[5], wid)
local h = redis.call('HGET', KEYS[6], wid)
if h then
  redis.call('HDEL', KEYS[6], wid)
  local hid, lim = string.match(h, '^(%S+) (%d+)$')
  if hid and redis.call('ZREM', KEYS[1], hid) == 1 then
    serve(tonumber(lim), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5])
  end
end
return 1
`)

// inUseScript counts unexpired leases. KEYS: holders.
var inUseScript = redis.NewScript(luaNow + `
return redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now), '+inf')
`)

// Acquire tries once, without waiting, to take one of limit slots of semaphore name for ttl. It returns
// ErrFull when no slot is free for this caller. waiterID names the caller across retries (for example
// "jobid/step/run"): a caller that got ErrFull keeps its place in a FIFO queue while it calls Acquire
// again within Config.WaiterTTL, and a free slot goes to the longest-waiting live caller first, so
// nobody starves under steady contention. An empty waiterID never queues and gets a slot only when
// no live waiter is left behind. limit <= 0 means unlimited: Acquire makes no Redis call and returns a
// lease with Token 0 that Renew and Release accept as no-ops.
func (s *Semaphore) Acquire(ctx context.Context, name string, limit int, ttl time.Duration, waiterID string) (Lease, error) {
	l, _, err := s.acquire(ctx, name, limit, ttl, waiterID, false)
	return l, err
}

// acquire is Acquire for a waiter that may take handed slots (hand, see WaitRoom): it also reports
// whether the lease is one a release handed to waiterID since its previous call. Such a lease was
// made after that previous call ran, so its RequestedAt is left zero for the caller to set.
func (s *Semaphore) acquire(ctx context.Context, name string, limit int, ttl time.Duration, waiterID string, hand bool) (Lease, bool, error) {
	if err := checkName("acquire", name); err != nil {
		return Lease{}, false, err
	}
	if limit <= 0 {
		return Lease{Name: name, ID: uuid.NewString()}, false, nil
	}
	if ttl < time.Millisecond {
		return Lease{}, false, fmt.Errorf("limiter: acquire %q: ttl %s is below 1ms", name, ttl)
	}
	handArg := "0"
	if hand && waiterID != "" {
		handArg = "1"
	}
	id := uuid.NewString()
	requested := s.cfg.Now()
	res, err := acquireScript.Run(ctx, s.rdb, s.keys(name).keyList(),
		limit, millis(ttl), id, waiterID, millis(s.cfg.WaiterTTL), millis(fenceTTL), handArg).Result()
	if err != nil {
		return Lease{}, false, fmt.Errorf("limiter: acquire %q: %w", name, err)
	}
	r, err := replyInts(res, 3)
	if err != nil {
		return Lease{}, false, fmt.Errorf("limiter: acquire %q: %w", name, err)
	}
	switch r[0] {
	case 1:
		return Lease{Name: name, ID: id, Token: r[1], ExpiresAt: time.UnixMilli(r[2]), RequestedAt: requested, limit: limit}, false, nil
	case 2:
		var hid string
		if reply, _ := res.([]any); len(reply) >= 4 {
			hid, _ = reply[3].(string)
		}
		if hid == "" {
			return Lease{}, false, fmt.Errorf("limiter: acquire %q: handed slot without a lease ID", name)
		}
		return Lease{Name: name, ID: hid, Token: r[1], ExpiresAt: time.UnixMilli(r[2]), limit: limit}, true, nil
	}
	return Lease{}, false, ErrFull
}

// Renew extends a lease still held to now+ttl by the Redis server clock and returns it updated. It
// returns ErrLeaseLost if the lease expired or was released; the caller must then stop using the
// resource.
func (s *Semaphore) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	if l.Token == 0 {
		return l, nil
	}
	if ttl < time.Millisecond {
		return l, fmt.Errorf("limiter: renew %q: ttl %s is below 1ms", l.Name, ttl)
	}
	res, err := renewScript.Run(ctx, s.rdb, []string{s.keys(l.Name).holders}, l.ID, millis(ttl)).Result()
	if err != nil {
		return l, fmt.Errorf("limiter: renew %q: %w", l.Name, err)
	}
	r, err := replyInts(res, 2)
	if err != nil {
		return l, fmt.Errorf("limiter: renew %q: %w", l.Name, err)
	}
	if r[0] != 1 {
		return l, fmt.Errorf("limiter: renew %q lease %s: %w", l.Name, l.ID, ErrLeaseLost)
	}
	l.ExpiresAt = time.UnixMilli(r[1])
	return l, nil
}

// Release gives a lease's slot back. It removes only this lease, and returns ErrLeaseLost if the
// lease was no longer held, which callers may ignore. When callers wait for the semaphore, the
// slots now free go to the longest waiting first, at once: a waiter that takes handed slots (see
// WaitRoom) is given its lease by the release itself, any other is woken to take its slot, and both
// are told on the wake channel, instead of finding the slot at a later poll.
func (s *Semaphore) Release(ctx context.Context, l Lease) error {
	if l.Token == 0 {
		return nil
	}
	// The wake-up is best effort: a waiter that misses it finds the slot (or the slot handed to it)
	// at its next poll.
	res, err := releaseScript.Run(ctx, s.rdb, s.keys(l.Name).keyList(), l.ID, max(l.limit, 1), s.wake, l.Name,
		millis(s.cfg.WaiterTTL), millis(fenceTTL)).Slice()
	if err != nil {
		return fmt.Errorf("limiter: release %q: %w", l.Name, err)
	}
	if len(res) == 0 {
		return fmt.Errorf("limiter: release %q: empty script reply", l.Name)
	}
	if held, _ := res[0].(int64); held != 1 {
		return fmt.Errorf("limiter: release %q lease %s: %w", l.Name, l.ID, ErrLeaseLost)
	}
	return nil
}

// Leave removes a waiter from the queue of semaphore name, so a caller that stops waiting does not
// hold up the waiters behind it until its place expires. A slot a release handed to the waiter,
// which it has not taken, goes to the next in the queue.
func (s *Semaphore) Leave(ctx context.Context, name, waiterID string) error {
	if waiterID == "" {
		return nil
	}
	if err := checkName("leave", name); err != nil {
		return err
	}
	err := leaveScript.Run(ctx, s.rdb, s.keys(name).keyList(), waiterID, s.wake, name,
		millis(s.cfg.WaiterTTL), millis(fenceTTL)).Err()
	if err != nil {
		return fmt.Errorf("limiter: leave %q: %w", name, err)
	}
	return nil
}

// wakeChannelName is the last part of the wake channel's name.
const wakeChannelName = "sem:wake"

// WakeChannel is the pub/sub channel on which Release names the waiters that may take a freed slot:
// the key prefix, rdb's database number and "sem:wake", e.g. "cao:{db3}:sem:wake" (see package
// pubsub: pub/sub is server-wide, and a deployment on another database must not wake these waiters).
func (s *Semaphore) WakeChannel() string { return s.wake }

// InUse returns the number of unexpired leases of semaphore name.
func (s *Semaphore) InUse(ctx context.Context, name string) (int, error) {
	if err := checkName("in use", name); err != nil {
		return 0, err
	}
	n, err := inUseScript.Run(ctx, s.rdb, []string{s.keys(name).holders}).Int64()
	if err != nil {
		return 0, fmt.Errorf("limiter: in use %q: %w", name, err)
	}
	return int(n), nil
}

// Prefix is the key prefix of the semaphore's Redis keys (Config.Prefix).
func (s *Semaphore) Prefix() string { return s.cfg.Prefix }

// Waiting returns how many callers wait in semaphore name's fleet-wide queue (in wait rooms).
func (s *Semaphore) Waiting(ctx context.Context, name string) (int, error) {
	if err := checkName("waiting", name); err != nil {
		return 0, err
	}
	n, err := s.rdb.ZCard(ctx, s.keys(name).waiters).Result()
	if err != nil {
		return 0, fmt.Errorf("limiter: waiting %q: %w", name, err)
	}
	return int(n), nil
}

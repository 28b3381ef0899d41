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
	return semKeys{holders: base + "holders", fence: base + "fence", waiters: base + "waiters", seen: base + "seen"}
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

// acquireScript takes a slot if one is free for this waiter, or records the waiter's place in the queue.
// KEYS: holders, fence, waiters, seen. ARGV: limit, ttl ms, lease ID, waiter ID ("" for none),
// waiter TTL ms, fence TTL ms.
// Reply: {1, token, expiry ms} when granted, {0, slots in use, live waiters ahead} when full.
var acquireScript = redis.NewScript(luaNow + `
local limit = tonumber(ARGV[1])
local wid = ARGV[4]
local wttl = tonumber(ARGV[5])

-- Reclaim expired leases.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))

-- Forget waiters that stopped polling; a bounded batch keeps the script short, later calls finish.
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(now - wttl), 'LIMIT', 0, 100)
if #stale > 0 then
  redis.call('ZREM', KEYS[3], unpack(stale))
  redis.call('ZREM', KEYS[4], unpack(stale))
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

// releaseScript removes one lease and wakes the waiters that may now take a free slot, the first
// (limit - slots in use) of the queue: it publishes their IDs on the wake channel (parseWake)
// before it answers, so the wake-up does not wait for the releaser's next round trip. KEYS:
// holders, waiters. ARGV: lease ID, limit, wake channel, semaphore name.
// Reply: {1 if the lease was still held else 0, waiter IDs...}.
var releaseScript = redis.NewScript(luaNow + `
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
local held = 0
if exp then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if tonumber(exp) > now then held = 1 end
end
local free = tonumber(ARGV[2]) - redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now), '+inf')
local reply = {held}
if free > 0 then
  local ids = redis.call('ZRANGE', KEYS[2], 0, free - 1)
  if #ids > 0 then
    redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\n' .. table.concat(ids, '\n'))
  end
  for i = 1, #ids do reply[#reply + 1] = ids[i] end
end
return reply
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
	if err := checkName("acquire", name); err != nil {
		return Lease{}, err
	}
	if limit <= 0 {
		return Lease{Name: name, ID: uuid.NewString()}, nil
	}
	if ttl < time.Millisecond {
		return Lease{}, fmt.Errorf("limiter: acquire %q: ttl %s is below 1ms", name, ttl)
	}
	k := s.keys(name)
	id := uuid.NewString()
	requested := s.cfg.Now()
	res, err := acquireScript.Run(ctx, s.rdb, []string{k.holders, k.fence, k.waiters, k.seen},
		limit, millis(ttl), id, waiterID, millis(s.cfg.WaiterTTL), millis(fenceTTL)).Result()
	if err != nil {
		return Lease{}, fmt.Errorf("limiter: acquire %q: %w", name, err)
	}
	r, err := replyInts(res, 3)
	if err != nil {
		return Lease{}, fmt.Errorf("limiter: acquire %q: %w", name, err)
	}
	if r[0] != 1 {
		return Lease{}, ErrFull
	}
	return Lease{Name: name, ID: id, Token: r[1], ExpiresAt: time.UnixMilli(r[2]), RequestedAt: requested, limit: limit}, nil
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
// lease was no longer held, which callers may ignore. When callers wait for the semaphore, it
// publishes a wake-up for the waiters that may now take a slot (as many as are free, longest waiting
// first) on the wake channel (see WaitRoom), so a freed slot is taken at once instead of at a
// waiter's next poll.
func (s *Semaphore) Release(ctx context.Context, l Lease) error {
	if l.Token == 0 {
		return nil
	}
	k := s.keys(l.Name)
	// The wake-up is best effort: a waiter that misses it finds the slot at its next poll.
	res, err := releaseScript.Run(ctx, s.rdb, []string{k.holders, k.waiters}, l.ID, max(l.limit, 1), s.wake, l.Name).Slice()
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
// hold up the waiters behind it until its place expires.
func (s *Semaphore) Leave(ctx context.Context, name, waiterID string) error {
	if waiterID == "" {
		return nil
	}
	if err := checkName("leave", name); err != nil {
		return err
	}
	k := s.keys(name)
	pipe := s.rdb.TxPipeline()
	pipe.ZRem(ctx, k.waiters, waiterID)
	pipe.ZRem(ctx, k.seen, waiterID)
	if _, err := pipe.Exec(ctx); err != nil {
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

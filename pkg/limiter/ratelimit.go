package limiter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// RateLimiter caps how many requests the whole fleet sends to a named API per time window.
//
// It keeps a sliding-window log, not GCRA: GCRA with a burst of `requests` lets up to 2*requests-1
// requests through within one window (a full burst, then one every per/requests), which breaks APIs
// that count requests per window. The log allows a full burst and never more than `requests` in any
// window of length `per`, at the cost of one Redis sorted set of about `requests` entries per name, so
// it suits API quotas (thousands per window), not millions.
//
// A request is admitted some time before it leaves (a worker records the attempt in between), and
// that delay varies, so admissions spaced by `per` could still reach the API closer together. Callers
// that admit early call Sent just before sending: it moves the request's entry to the send time, and
// the guarantee then holds for send times as long as each send follows its admission within `per`.
type RateLimiter struct {
	rdb redis.UniversalClient
	cfg Config
}

// Reservation is one request admitted by a RateLimiter, to pass to Sent.
type Reservation struct {
	// Name is the rate limit the request was admitted by.
	Name string
	// ID identifies the request's entry in the window. Empty for an unlimited rate limit.
	ID  string
	per time.Duration
}

// NewRateLimiter returns a RateLimiter that keeps its state in rdb.
func NewRateLimiter(rdb redis.UniversalClient, cfg Config) *RateLimiter {
	return &RateLimiter{rdb: rdb, cfg: cfg.WithDefaults()}
}

// luaRateAt sets `at`, the time recorded for an entry: the server time, but never before the newest
// entry, so the log stays ordered the way it was written if the server clock steps back.
const luaRateAt = `
local at = now_us
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then at = math.max(at, tonumber(newest[2])) end
`

// allowScript admits a request if fewer than `requests` were admitted (or sent) in the last `per`.
// KEYS: log, a ZSET request ID -> admission (or send) time in µs. ARGV: requests, per µs, per ms (key
// TTL), request ID.
// Reply: {1, 0, admission time µs} or {0, wait µs, server time µs}.
var allowScript = redis.NewScript(luaNow + luaRateAt + `
local n = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(at - per))
local len = redis.call('ZCARD', KEYS[1])
if len >= n then
  local e = redis.call('ZRANGE', KEYS[1], len - n, len - n, 'WITHSCORES')
  return {0, fmt(math.max(tonumber(e[2]) + per - now_us, 1)), fmt(now_us)}
end
redis.call('ZADD', KEYS[1], fmt(at), ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 0, fmt(at)}
`)

// sentScript moves a request's entry to the current time (adding it back if it already left the
// window). KEYS: log. ARGV: per ms (key TTL), request ID. Reply: the recorded time µs.
var sentScript = redis.NewScript(luaNow + luaRateAt + `
redis.call('ZADD', KEYS[1], fmt(at), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return fmt(at)
`)

// Reserve is Allow that also returns the admitted request's reservation; pass it to Sent just before
// the request leaves.
func (r *RateLimiter) Reserve(ctx context.Context, name string, requests int, per time.Duration) (res Reservation, allowed bool, retryAfter time.Duration, err error) {
	res, allowed, retryAfter, _, err = r.reserve(ctx, name, requests, per)
	return res, allowed, retryAfter, err
}

// Sent records that the request of res leaves now: its entry in the window moves from its admission
// time to now, so requests admitted later are spaced from the actual send. A no-op for an unlimited
// rate limit.
func (r *RateLimiter) Sent(ctx context.Context, res Reservation) error {
	if res.ID == "" {
		return nil
	}
	if err := sentScript.Run(ctx, r.rdb, []string{r.key(res.Name)}, millis(res.per), res.ID).Err(); err != nil {
		return fmt.Errorf("limiter: sent %q: %w", res.Name, err)
	}
	return nil
}

func (r *RateLimiter) key(name string) string { return r.cfg.Prefix + "rate:{" + name + "}" }

// allow is Allow that also returns the server time of the decision, which tests use to check windows.
func (r *RateLimiter) allow(ctx context.Context, name string, requests int, per time.Duration) (bool, time.Duration, time.Time, error) {
	_, allowed, retryAfter, at, err := r.reserve(ctx, name, requests, per)
	return allowed, retryAfter, at, err
}

func (r *RateLimiter) reserve(ctx context.Context, name string, requests int, per time.Duration) (Reservation, bool, time.Duration, time.Time, error) {
	if name == "" {
		return Reservation{}, false, 0, time.Time{}, errors.New("limiter: allow: empty rate limit name")
	}
	if requests <= 0 {
		return Reservation{Name: name}, true, 0, time.Time{}, nil
	}
	if per < time.Microsecond {
		return Reservation{}, false, 0, time.Time{}, fmt.Errorf("limiter: allow %q: per %s is below 1µs", name, per)
	}
	res := Reservation{Name: name, ID: uuid.NewString(), per: per}
	out, err := allowScript.Run(ctx, r.rdb, []string{r.key(name)}, requests, per.Microseconds(), millis(per), res.ID).Result()
	if err != nil {
		return Reservation{}, false, 0, time.Time{}, fmt.Errorf("limiter: allow %q: %w", name, err)
	}
	v, err := replyInts(out, 3)
	if err != nil {
		return Reservation{}, false, 0, time.Time{}, fmt.Errorf("limiter: allow %q: %w", name, err)
	}
	if v[0] != 1 {
		return Reservation{}, false, time.Duration(v[1]) * time.Microsecond, time.UnixMicro(v[2]), nil
	}
	return res, true, 0, time.UnixMicro(v[2]), nil
}

package limiter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RateLimiter caps how many requests the whole fleet sends to a named API per time window.
//
// It keeps a sliding-window log, not GCRA: GCRA with a burst of `requests` lets up to 2*requests-1
// requests through within one window (a full burst, then one every per/requests), which breaks APIs
// that count requests per window. The log allows a full burst and never more than `requests` in any
// window of length `per`, at the cost of one Redis list of at most `requests` timestamps per name, so
// it suits API quotas (thousands per window), not millions.
type RateLimiter struct {
	rdb redis.UniversalClient
	cfg Config
}

// NewRateLimiter returns a RateLimiter that keeps its state in rdb.
func NewRateLimiter(rdb redis.UniversalClient, cfg Config) *RateLimiter {
	return &RateLimiter{rdb: rdb, cfg: cfg.WithDefaults()}
}

// allowScript admits a request if fewer than `requests` were admitted in the last `per`.
// KEYS: log, a LIST of admission times in µs, oldest first. ARGV: requests, per µs, per ms (key TTL).
// Reply: {1, 0, admission time µs} or {0, wait µs, server time µs}.
var allowScript = redis.NewScript(luaNow + `
local n = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local len = redis.call('LLEN', KEYS[1])
-- Never record a time before the newest entry, so the log stays sorted if the server clock steps back.
local at = now_us
if len > 0 then at = math.max(at, tonumber(redis.call('LINDEX', KEYS[1], -1))) end
if len >= n then
  local free_at = tonumber(redis.call('LINDEX', KEYS[1], len - n)) + per
  if free_at > at then return {0, fmt(free_at - now_us), fmt(now_us)} end
end
redis.call('RPUSH', KEYS[1], fmt(at))
if len >= n then redis.call('LTRIM', KEYS[1], -n, -1) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 0, fmt(at)}
`)

// Allow takes one request from the fleet-wide budget of `requests` per `per` for name. When it returns
// allowed=false, retryAfter is how long until a request would be allowed. A burst of up to `requests` is
// allowed, and no window of length `per` (by the Redis server clock) ever holds more than `requests`
// allowed requests. requests <= 0 means unlimited: Allow makes no Redis call.
func (r *RateLimiter) Allow(ctx context.Context, name string, requests int, per time.Duration) (allowed bool, retryAfter time.Duration, err error) {
	allowed, retryAfter, _, err = r.allow(ctx, name, requests, per)
	return allowed, retryAfter, err
}

// allow is Allow that also returns the server time of the decision, which tests use to check windows.
func (r *RateLimiter) allow(ctx context.Context, name string, requests int, per time.Duration) (bool, time.Duration, time.Time, error) {
	if name == "" {
		return false, 0, time.Time{}, errors.New("limiter: allow: empty rate limit name")
	}
	if requests <= 0 {
		return true, 0, time.Time{}, nil
	}
	if per < time.Microsecond {
		return false, 0, time.Time{}, fmt.Errorf("limiter: allow %q: per %s is below 1µs", name, per)
	}
	key := r.cfg.Prefix + "rate:{" + name + "}"
	res, err := allowScript.Run(ctx, r.rdb, []string{key}, requests, per.Microseconds(), millis(per)).Result()
	if err != nil {
		return false, 0, time.Time{}, fmt.Errorf("limiter: allow %q: %w", name, err)
	}
	v, err := replyInts(res, 3)
	if err != nil {
		return false, 0, time.Time{}, fmt.Errorf("limiter: allow %q: %w", name, err)
	}
	return v[0] == 1, time.Duration(v[1]) * time.Microsecond, time.UnixMicro(v[2]), nil
}

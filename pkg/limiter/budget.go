package limiter

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// holdScript sets a service's hold for at least ttl: a shorter hold already set is extended, a longer
// one kept (a hold never ends earlier because a later answer reported an earlier reset).
// KEYS: hold. ARGV: ttl ms, reason. Reply: {the hold left ms, 1 if this call set it}.
var holdScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
local ttl = tonumber(ARGV[1])
if left >= ttl then return {left, 0} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return {ttl, 1}
`)

// Hold records that no worker may call service name for d from now (by the Redis server's clock),
// because the provider said its budget is spent until then; reason says which budget ("requests",
// "tokens", "retry_after"). A hold already longer is kept. It returns how long the hold lasts now
// and whether this call set or extended it. d below a millisecond is a no-op.
func (a *Adaptive) Hold(ctx context.Context, name string, d time.Duration, reason string) (time.Duration, bool, error) {
	if err := checkAdaptiveName("hold", name); err != nil {
		return 0, false, err
	}
	if d < time.Millisecond {
		return 0, false, nil
	}
	hold, _ := a.adaptiveKeys(name)
	res, err := holdScript.Run(ctx, a.rdb, []string{hold}, millis(d), reason).Result()
	if err != nil {
		return 0, false, fmt.Errorf("limiter: hold %q: %w", name, err)
	}
	v, err := replyInts(res, 2)
	if err != nil {
		return 0, false, fmt.Errorf("limiter: hold %q: %w", name, err)
	}
	return time.Duration(v[0]) * time.Millisecond, v[1] == 1, nil
}

package limiter

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
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

// ProviderBudget is one budget as the provider last reported it on an answer of a service.
type ProviderBudget struct {
	Name      string        // "requests", "tokens", an IETF policy name, or "" unnamed
	Limit     int64         // the budget's size; 0 when not reported (ReportBudgets: below 0)
	Remaining int64         // units left when reported
	ResetIn   time.Duration // until it refills, from now; 0 when not reported or past (ReportBudgets: below 0)
}

// reportScript records the budgets an answer reported. KEYS: the service's budgets hash. ARGV: ttl
// ms, then per budget: name, limit (-1 unknown), remaining, reset ms (-1 unknown). Each is stored as
// "limit remaining reset_at_ms" by the server clock.
var reportScript = redis.NewScript(luaNow + `
for i = 2, #ARGV, 4 do
  local reset = tonumber(ARGV[i + 3])
  local at = -1
  if reset >= 0 then at = now + reset end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' ' .. fmt(at))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`)

// readBudgetsScript returns the budgets with the server time. KEYS: the budgets hash.
var readBudgetsScript = redis.NewScript(luaNow + `
local out = {fmt(now)}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
`)

// budgetsTTL is how long a service's reported budgets are kept after its last answer that reported any.
const budgetsTTL = time.Hour

func (a *Adaptive) budgetsKey(name string) string { return a.cfg.Prefix + "budgets:{" + name + "}" }

// ReportBudgets records the budgets an answer of service name reported, for /health/services and the
// metrics (a limit or reset below zero means the answer did not say).
func (a *Adaptive) ReportBudgets(ctx context.Context, name string, budgets []ProviderBudget) error {
	if err := checkAdaptiveName("report budgets", name); err != nil {
		return err
	}
	if len(budgets) == 0 {
		return nil
	}
	args := make([]any, 0, 1+4*len(budgets))
	args = append(args, millis(budgetsTTL))
	for _, b := range budgets {
		reset := int64(-1)
		if b.ResetIn >= 0 {
			reset = b.ResetIn.Milliseconds()
		}
		args = append(args, b.Name, b.Limit, b.Remaining, reset)
	}
	if err := reportScript.Run(ctx, a.rdb, []string{a.budgetsKey(name)}, args...).Err(); err != nil {
		return fmt.Errorf("limiter: report budgets %q: %w", name, err)
	}
	return nil
}

// Budgets returns the budgets service name's provider last reported, by name, with the time left
// until each resets as of now (0 once past or when not reported).
func (a *Adaptive) Budgets(ctx context.Context, name string) ([]ProviderBudget, error) {
	if err := checkAdaptiveName("budgets", name); err != nil {
		return nil, err
	}
	res, err := readBudgetsScript.Run(ctx, a.rdb, []string{a.budgetsKey(name)}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("limiter: budgets %q: %w", name, err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	now, err := strconv.ParseInt(res[0], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("limiter: budgets %q: server time %q", name, res[0])
	}
	var out []ProviderBudget
	for i := 1; i+1 < len(res); i += 2 {
		var limit, remaining, at int64
		if _, err := fmt.Sscanf(res[i+1], "%d %d %d", &limit, &remaining, &at); err != nil {
			continue
		}
		b := ProviderBudget{Name: res[i], Limit: max(limit, 0), Remaining: remaining}
		if at >= 0 && at > now {
			b.ResetIn = time.Duration(at-now) * time.Millisecond
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(x, y ProviderBudget) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

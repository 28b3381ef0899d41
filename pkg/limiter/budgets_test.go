package limiter

import (
	"context"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// budgetBackend is one Redis the budgets run on in production: a real server, or the embedded
// mode's miniredis.
type budgetBackend struct {
	name string
	rdb  redis.UniversalClient
	cfg  Config
}

// budgetBackends returns a real Redis (under a key prefix of the test's own) and a miniredis.
func budgetBackends(t *testing.T) []budgetBackend {
	t.Helper()
	rdb, prefix := testinfra.KeyPrefix(t)
	m := miniredis.RunT(t)
	mini := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = mini.Close() })
	return []budgetBackend{
		{name: "redis", rdb: rdb, cfg: Config{Prefix: prefix}},
		{name: "miniredis", rdb: mini, cfg: Config{}},
	}
}

// onBothBackends runs fn as a subtest on each backend.
func onBothBackends(t *testing.T, fn func(t *testing.T, ctx context.Context, b *Budgets, be budgetBackend)) {
	t.Helper()
	for _, be := range budgetBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			fn(t, testinfra.Context(t, 30*time.Second), NewBudgets(be.rdb, be.cfg), be)
		})
	}
}

var (
	hourRequests = Budget{Name: "requests-3600000", Kind: RequestBudget, Limit: 5, Per: time.Hour}
	hourTokens   = Budget{Name: "tokens", Kind: UnitBudget, Limit: 100, Per: time.Hour}
)

func reserve(t *testing.T, ctx context.Context, b *Budgets, service string, asks ...Ask) (Grant, bool) {
	t.Helper()
	g, d, err := b.Reserve(ctx, service, asks)
	require.NoError(t, err)
	if d != nil {
		require.Positive(t, d.Wait)
		return Grant{}, false
	}
	require.NotEmpty(t, g.ID)
	return g, true
}

func remaining(t *testing.T, ctx context.Context, b *Budgets, service string, budgets ...Budget) []int64 {
	t.Helper()
	st, err := b.Remaining(ctx, service, budgets)
	require.NoError(t, err)
	out := make([]int64, len(st))
	for i, s := range st {
		out[i] = s.Remaining
		require.Equal(t, max(s.Limit-s.Used, 0), s.Remaining)
	}
	return out
}

// TestBudgetsAllOrNothing: a call that one budget refuses is recorded in none, so the budget that
// had room keeps it for the calls that fit everywhere.
func TestBudgetsAllOrNothing(t *testing.T) {
	t.Parallel()
	onBothBackends(t, func(t *testing.T, ctx context.Context, b *Budgets, _ budgetBackend) {
		ask := func(units int64) []Ask {
			return []Ask{{Budget: hourRequests}, {Budget: hourTokens, Units: units}}
		}
		// Tokens run out first: 3 calls of 30.
		for range 3 {
			_, ok := reserve(t, ctx, b, "llm", ask(30)...)
			require.True(t, ok)
		}
		_, ok := reserve(t, ctx, b, "llm", ask(30)...)
		require.False(t, ok)
		require.Equal(t, []int64{2, 10}, remaining(t, ctx, b, "llm", hourRequests, hourTokens), "the refused call took no request")
		// Then requests: 2 more calls of 5 tokens, not 4.
		for range 2 {
			_, ok := reserve(t, ctx, b, "llm", ask(5)...)
			require.True(t, ok)
		}
		_, ok = reserve(t, ctx, b, "llm", ask(5)...)
		require.False(t, ok)
		require.Equal(t, []int64{0, 0}, remaining(t, ctx, b, "llm", hourRequests, hourTokens), "the refused call took no tokens")

		// Another service's budgets of the same names are its own.
		_, ok = reserve(t, ctx, b, "other", ask(100)...)
		require.True(t, ok)
	})
}

// TestBudgetsConcurrentReservationsAreAtomic hammers three budgets of one service from many
// goroutines, with calls that fit some budgets and not others, and checks that every budget holds
// exactly the calls that were admitted: never a call recorded in one and not another.
func TestBudgetsConcurrentReservationsAreAtomic(t *testing.T) {
	t.Parallel()
	onBothBackends(t, func(t *testing.T, ctx context.Context, b *Budgets, be budgetBackend) {
		budgets := []Budget{
			{Name: "a", Kind: RequestBudget, Limit: 40, Per: time.Hour},
			{Name: "b", Kind: UnitBudget, Limit: 2500, Per: time.Hour},
			{Name: "c", Kind: UnitBudget, Limit: 1800, Per: time.Hour},
		}
		var (
			mu       sync.Mutex
			admitted []string
			used     [3]int64
			wg       sync.WaitGroup
		)
		for g := range 16 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 7))
				for range 25 {
					asks := []Ask{{Budget: budgets[0]}, {Budget: budgets[1], Units: rng.Int64N(120)}, {Budget: budgets[2], Units: rng.Int64N(90)}}
					gr, d, err := b.Reserve(ctx, "svc", asks)
					if err != nil {
						t.Errorf("reserve: %v", err)
						return
					}
					if d != nil {
						continue
					}
					mu.Lock()
					admitted = append(admitted, gr.ID)
					used[0]++
					used[1] += asks[1].Units
					used[2] += asks[2].Units
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		require.NotEmpty(t, admitted)
		sort.Strings(admitted)
		for i, bg := range budgets {
			log, units := b.budgetKeys("svc", bg.Name)
			members, err := be.rdb.ZRange(ctx, log, 0, -1).Result()
			require.NoError(t, err)
			sort.Strings(members)
			require.Equal(t, admitted, members, "budget %s holds exactly the admitted calls", bg.Name)
			require.LessOrEqual(t, used[i], bg.Limit, "budget %s over its limit", bg.Name)
			if bg.Kind == UnitBudget {
				total, err := be.rdb.HGet(ctx, units, "~used").Int64()
				require.NoError(t, err)
				require.Equal(t, used[i], total, "budget %s's running total", bg.Name)
			}
		}
		st, err := b.Remaining(ctx, "svc", budgets)
		require.NoError(t, err)
		for i := range budgets {
			require.Equal(t, used[i], st[i].Used)
		}
		t.Logf("%d of 400 calls admitted; used %v of 40/2500/1800", len(admitted), used)
	})
}

// TestBudgetsSettleAndCancel: settling for less frees the difference at once; an unknown cost
// keeps the reservation; a cancelled call gives everything back; a zero reservation still needs a
// free unit.
func TestBudgetsSettleAndCancel(t *testing.T) {
	t.Parallel()
	onBothBackends(t, func(t *testing.T, ctx context.Context, b *Budgets, _ budgetBackend) {
		tok := func(n int64) []Ask { return []Ask{{Budget: hourRequests}, {Budget: hourTokens, Units: n}} }
		first, ok := reserve(t, ctx, b, "llm", tok(60)...)
		require.True(t, ok)
		_, ok = reserve(t, ctx, b, "llm", tok(60)...)
		require.False(t, ok)
		require.NoError(t, b.Sent(ctx, first))
		require.NoError(t, b.Settle(ctx, first, []int64{-1, 10}))
		require.Equal(t, []int64{4, 90}, remaining(t, ctx, b, "llm", hourRequests, hourTokens), "the call cost 10 of its 60")
		second, ok := reserve(t, ctx, b, "llm", tok(60)...)
		require.True(t, ok)
		require.NoError(t, b.Settle(ctx, second, []int64{-1, -1}))
		require.Equal(t, []int64{3, 30}, remaining(t, ctx, b, "llm", hourRequests, hourTokens), "an unknown cost keeps the reservation")
		require.NoError(t, b.Settle(ctx, second, []int64{-1, 85}))
		require.Equal(t, []int64{3, 5}, remaining(t, ctx, b, "llm", hourRequests, hourTokens), "a cost above the reservation counts in full")
		require.NoError(t, b.Cancel(ctx, second))
		require.Equal(t, []int64{4, 90}, remaining(t, ctx, b, "llm", hourRequests, hourTokens))
		require.NoError(t, b.Cancel(ctx, second), "cancelling twice is harmless")
		require.NoError(t, b.Settle(ctx, second, []int64{-1, 50}), "settling a cancelled call counts nothing")
		require.Equal(t, []int64{4, 90}, remaining(t, ctx, b, "llm", hourRequests, hourTokens))

		third, ok := reserve(t, ctx, b, "llm", tok(90)...)
		require.True(t, ok)
		_, ok = reserve(t, ctx, b, "llm", tok(0)...)
		require.False(t, ok, "a spent budget admits nothing, not even a call that reserves 0")
		require.NoError(t, b.Settle(ctx, third, []int64{-1, 89}))
		zero, ok := reserve(t, ctx, b, "llm", tok(0)...)
		require.True(t, ok, "one free unit admits a call that reserves 0")
		require.NoError(t, b.Settle(ctx, zero, []int64{-1, 40}))
		require.Equal(t, []int64{2, 0}, remaining(t, ctx, b, "llm", hourRequests, hourTokens), "89 + 40 of 100: over by the cost of a call that reserved nothing")

		// A reservation above the limit is clamped: it waits for an empty window, never forever.
		big := Budget{Name: "big", Kind: UnitBudget, Limit: 50, Per: time.Hour}
		g, ok := reserve(t, ctx, b, "clamp", Ask{Budget: big, Units: 500})
		require.True(t, ok)
		require.EqualValues(t, 50, g.Asks()[0].Units)

		// The zero grant (no budgets) is a no-op everywhere.
		none, d, err := b.Reserve(ctx, "llm", nil)
		require.NoError(t, err)
		require.Nil(t, d)
		require.NoError(t, b.Sent(ctx, none))
		require.NoError(t, b.Settle(ctx, none, nil))
		require.NoError(t, b.Cancel(ctx, none))
	})
}

// TestBudgetsShareTheRateLimitersWindow: the requests budget named "" is the service's RateLimiter
// window, so workers of an older version (rate_limit through RateLimiter) and this one share it.
func TestBudgetsShareTheRateLimitersWindow(t *testing.T) {
	t.Parallel()
	onBothBackends(t, func(t *testing.T, ctx context.Context, _ *Budgets, be budgetBackend) {
		rate := NewRateLimiter(be.rdb, be.cfg)
		b := BudgetsFor(rate)
		_, ok, _, err := rate.Reserve(ctx, "api", 2, time.Hour)
		require.NoError(t, err)
		require.True(t, ok)
		legacy := Budget{Kind: RequestBudget, Limit: 2, Per: time.Hour}
		_, ok = reserve(t, ctx, b, "api", Ask{Budget: legacy})
		require.True(t, ok)
		_, ok = reserve(t, ctx, b, "api", Ask{Budget: legacy})
		require.False(t, ok)
		_, ok, _, err = rate.Reserve(ctx, "api", 2, time.Hour)
		require.NoError(t, err)
		require.False(t, ok)
	})
}

func TestBudgetsRefuseBadNames(t *testing.T) {
	t.Parallel()
	unused := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached: the names are refused first
	t.Cleanup(func() { _ = unused.Close() })
	b := NewBudgets(unused, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		service string
		budget  Budget
		want    string
	}{
		{"", hourTokens, "empty semaphore name"},
		{"a}b", hourTokens, "may not contain"},
		{"llm", Budget{Name: "x{y", Kind: UnitBudget, Limit: 1, Per: time.Second}, "may not contain"},
		{"llm", Budget{Name: "x", Kind: UnitBudget, Limit: 0, Per: time.Second}, "want at least 1"},
		{"llm", Budget{Name: "x", Kind: UnitBudget, Limit: 1, Per: time.Microsecond}, "want at least 1ms"},
	} {
		_, _, err := b.Reserve(ctx, tc.service, []Ask{{Budget: tc.budget}})
		require.ErrorContains(t, err, tc.want)
		_, err = b.Remaining(ctx, tc.service, []Budget{tc.budget})
		require.ErrorContains(t, err, tc.want)
	}
}

// TestBudgetsOnMiniredisClock checks the times the budgets give, exactly, with miniredis's clock
// set by hand: the wait until enough units leave, the budget that waits longest, Sent, the window
// sliding, and what Remaining reports.
func TestBudgetsOnMiniredisClock(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	m.SetTime(t0)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	b := NewBudgets(rdb, Config{})
	tokens := Budget{Name: "tokens", Kind: UnitBudget, Limit: 100, Per: time.Second}
	reqs := Budget{Name: "reqs", Kind: RequestBudget, Limit: 10, Per: 2 * time.Second}
	at := func(d time.Duration, units int64) (Grant, *Denial) {
		m.SetTime(t0.Add(d))
		g, den, err := b.Reserve(ctx, "llm", []Ask{{Budget: reqs}, {Budget: tokens, Units: units}})
		require.NoError(t, err)
		return g, den
	}
	g1, den := at(0, 50)
	require.Nil(t, den)
	_, den = at(200*time.Millisecond, 30)
	require.Nil(t, den)
	_, den = at(400*time.Millisecond, 20)
	require.Nil(t, den)

	st, err := b.Remaining(ctx, "llm", []Budget{reqs, tokens})
	require.NoError(t, err)
	require.Equal(t, []BudgetState{
		{Budget: reqs, Used: 3, Remaining: 7, Reset: 1600 * time.Millisecond, Clear: 2 * time.Second},
		{Budget: tokens, Used: 100, Remaining: 0, Reset: 600 * time.Millisecond, Clear: time.Second},
	}, st, "at 0.4s: the oldest entry (0s) leaves at 2s and 1s, the newest (0.4s) at 2.4s and 1.4s")

	// 60 more tokens need the first two calls (50 + 30) to leave: the second leaves at 1.2s.
	_, den = at(500*time.Millisecond, 60)
	require.NotNil(t, den)
	require.Equal(t, 700*time.Millisecond, den.Wait)
	require.Equal(t, 1, den.Budget, "the tokens budget is the one that waits")
	_, den = at(500*time.Millisecond, 40)
	require.Equal(t, 500*time.Millisecond, den.Wait, "40 tokens need only the first call (50) to leave")

	// The first call is sent only now: its entry moves to 0.9s and 60 tokens wait for it again.
	m.SetTime(t0.Add(900 * time.Millisecond))
	require.NoError(t, b.Sent(ctx, g1))
	_, den = at(1100*time.Millisecond, 60)
	require.NotNil(t, den)
	require.Equal(t, 800*time.Millisecond, den.Wait, "30 + 20 + the 50 sent at 0.9s must leave")
	_, den = at(1100*time.Millisecond, 30)
	require.Equal(t, 100*time.Millisecond, den.Wait, "30 tokens need the call of 0.2s (30) to leave")
	_, den = at(1250*time.Millisecond, 30)
	require.Nil(t, den, "it left at 1.2s")

	// Requests wait longest when they are what is missing: at 3s, the call of 1.25s is the only
	// one left in the 2s window, and nine more fill it.
	for range 9 {
		_, den = at(3*time.Second, 1)
		require.Nil(t, den)
	}
	_, den = at(3*time.Second, 1)
	require.NotNil(t, den)
	require.Equal(t, 0, den.Budget, "the requests budget is the one that waits")
	require.Equal(t, 250*time.Millisecond, den.Wait, "until the call of 1.25s leaves the 2s window")

	// Everything leaves: the whole budget is back, and the keys expire.
	m.SetTime(t0.Add(10 * time.Second))
	st, err = b.Remaining(ctx, "llm", []Budget{reqs, tokens})
	require.NoError(t, err)
	require.Equal(t, []BudgetState{{Budget: reqs, Remaining: 10}, {Budget: tokens, Remaining: 100}}, st)
	m.FastForward(10 * time.Second)
	require.Empty(t, m.Keys(), "the budgets' keys expire once their windows are empty")
}

// TestBudgetsSentBringsBackAnEntryThatLeft: a call admitted more than a window before it leaves
// counts again from its send, with what it reserved.
func TestBudgetsSentBringsBackAnEntryThatLeft(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	m.SetTime(t0)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	b := NewBudgets(rdb, Config{})
	tokens := Budget{Name: "tokens", Kind: UnitBudget, Limit: 100, Per: time.Second}
	g, den, err := b.Reserve(ctx, "llm", []Ask{{Budget: tokens, Units: 70}})
	require.NoError(t, err)
	require.Nil(t, den)
	m.SetTime(t0.Add(1500 * time.Millisecond))
	st, err := b.Remaining(ctx, "llm", []Budget{tokens})
	require.NoError(t, err)
	require.EqualValues(t, 100, st[0].Remaining, "the admission left the window")
	require.NoError(t, b.Sent(ctx, g))
	st, err = b.Remaining(ctx, "llm", []Budget{tokens})
	require.NoError(t, err)
	require.EqualValues(t, 30, st[0].Remaining, "the send counts with its reservation")
	require.NoError(t, b.Settle(ctx, g, []int64{20}))
	st, err = b.Remaining(ctx, "llm", []Budget{tokens})
	require.NoError(t, err)
	require.EqualValues(t, 80, st[0].Remaining)
}

// TestBudgetsNeverOverBudget is the property the budgets exist for: calls of random sizes from
// many goroutines, each sent right after its admission and settled for a random cost no larger
// than its reservation (as a provider's total_tokens never exceeds max_tokens), and no window of
// length per, by the Redis server clock, ever holds more than the budget of calls sent, in
// requests or in units. The budget is also used: the calls admitted fill it.
func TestBudgetsNeverOverBudget(t *testing.T) {
	t.Parallel()
	b := setup(t)
	budgets := NewBudgets(b.rdb, Config{Prefix: b.prefix})
	const (
		per        = 300 * time.Millisecond
		units      = 1000
		requests   = 12
		goroutines = 8
		duration   = 2 * time.Second
	)
	reqs := Budget{Name: "r", Kind: RequestBudget, Limit: requests, Per: per}
	toks := Budget{Name: "u", Kind: UnitBudget, Limit: units, Per: per}
	type send struct {
		at   time.Time
		cost int64
	}
	ctx, cancel := context.WithTimeout(b.ctx, duration)
	defer cancel()
	var (
		mu      sync.Mutex
		sends   []send
		denials int
		wg      sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 11))
			for ctx.Err() == nil {
				reserve := rng.Int64N(300)
				gr, d, err := budgets.Reserve(ctx, "llm", []Ask{{Budget: reqs}, {Budget: toks, Units: reserve}})
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					t.Errorf("reserve: %v", err)
					return
				}
				if d != nil {
					mu.Lock()
					denials++
					mu.Unlock()
					if d.Wait <= 0 || d.Wait > per {
						t.Errorf("wait %s outside (0, %s]", d.Wait, per)
					}
					// Come back when the limiter says there is room, as the runner does (spinning
					// would load the Redis other packages' tests share).
					tm := time.NewTimer(d.Wait)
					select {
					case <-ctx.Done():
						tm.Stop()
					case <-tm.C:
					}
					continue
				}
				at, err := budgets.sent(context.WithoutCancel(ctx), gr)
				if err != nil {
					t.Errorf("sent: %v", err)
					return
				}
				cost := rng.Int64N(reserve + 1)
				if err := budgets.Settle(context.WithoutCancel(ctx), gr, []int64{-1, cost}); err != nil {
					t.Errorf("settle: %v", err)
					return
				}
				mu.Lock()
				sends = append(sends, send{at: at, cost: cost})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(sends, func(a, b send) int { return a.at.Compare(b.at) })
	var total int64
	for i := range sends {
		var n, sum int64
		for j := i; j < len(sends) && sends[j].at.Sub(sends[i].at) < per; j++ {
			n++
			sum += sends[j].cost
		}
		require.LessOrEqual(t, n, int64(requests), "calls sent within %s from %s", per, sends[i].at)
		require.LessOrEqual(t, sum, int64(units), "units sent within %s from %s", per, sends[i].at)
		total += sends[i].cost
	}
	span := sends[len(sends)-1].at.Sub(sends[0].at)
	windows := float64(span)/float64(per) + 1
	require.Positive(t, denials)
	// Either budget binds: together they must let through more than half of the lesser of them.
	require.Greater(t, float64(len(sends)), 0.5*windows*float64(min(requests, units/150)),
		"%d calls over %s: the budgets were not used", len(sends), span)
	t.Logf("%d calls (%d units) sent over %s, %d denials; never more than %d calls or %d units in %s",
		len(sends), total, span.Round(time.Millisecond), denials, requests, units, per)
}

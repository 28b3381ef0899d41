// Package maintenance runs CAO's periodic recovery work — reclaiming steps of dead workers, detecting
// stuck jobs, re-enqueueing tasks Redis lost, expiring idempotency keys — in exactly one process of
// the fleet at a time, elected through a lease in Redis.
package maintenance

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/startstop"
)

// LeaderKey is the Redis key holding the maintenance leader's lease.
const LeaderKey = "cao:maintenance:leader"

// Config tunes the maintenance loop; zero values take the defaults.
type Config struct {
	// ID names this process as a leader candidate (the worker or API instance id).
	ID string
	// Tick is the base period: leadership renewal, Redis-loss check and expired-step reaping. Default 1s.
	Tick time.Duration
	// LeaderTTL is the leader lease; another process takes over this long after a leader dies. Default 5s.
	LeaderTTL time.Duration
	// StuckEvery is how often stuck jobs are looked for. Default 15s.
	StuckEvery time.Duration
	// KeysEvery is how often expired idempotency keys are deleted. Default 10m.
	KeysEvery time.Duration
	// Retention is how long terminal jobs are kept (CAO_RETENTION); 0 keeps everything.
	Retention time.Duration
	// RetentionEvery is how often jobs past retention are deleted. Default 1m, or Retention/2 when
	// that is shorter.
	RetentionEvery time.Duration
	// RetentionBatch is how many jobs one delete statement removes (default 200); one pass runs at
	// most 10 of them, the rest waits for the next pass.
	RetentionBatch int
	// Now is the clock that spaces the periodic tasks. Default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Tick <= 0 {
		c.Tick = time.Second
	}
	if c.LeaderTTL <= 0 {
		c.LeaderTTL = 5 * time.Second
	}
	if c.StuckEvery <= 0 {
		c.StuckEvery = 15 * time.Second
	}
	if c.KeysEvery <= 0 {
		c.KeysEvery = 10 * time.Minute
	}
	if c.RetentionEvery <= 0 {
		c.RetentionEvery = time.Minute
		if c.Retention > 0 && c.Retention/2 < c.RetentionEvery {
			c.RetentionEvery = max(c.Retention/2, c.Tick)
		}
	}
	if c.RetentionBatch <= 0 {
		c.RetentionBatch = 200
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Maintainer runs the periodic recovery work while it is the leader.
type Maintainer struct {
	orch *orchestrator.Orchestrator
	rec  *dispatch.Reconciler
	rdb  redis.UniversalClient
	cfg  Config

	life startstop.Loop

	mu         sync.Mutex
	leader     bool
	lastKey    time.Time
	lastPurged time.Time
}

// New returns a maintainer; rec may be nil (no Redis reconciliation).
func New(orch *orchestrator.Orchestrator, rec *dispatch.Reconciler, rdb redis.UniversalClient, cfg Config) *Maintainer {
	return &Maintainer{orch: orch, rec: rec, rdb: rdb, cfg: cfg.withDefaults()}
}

// IsLeader reports whether this process currently holds the maintenance lease.
func (m *Maintainer) IsLeader() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leader
}

// Start runs the loop until Stop. Safe to call twice.
func (m *Maintainer) Start(ctx context.Context) error {
	m.life.Start(ctx, m.loop)
	return nil
}

// Stop ends the loop and gives up leadership. Safe to call twice.
func (m *Maintainer) Stop(ctx context.Context) error {
	if stopped, err := m.life.Stop(ctx); !stopped || err != nil {
		return err
	}
	if m.IsLeader() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer rcancel()
		_ = releaseScript.Run(rctx, m.rdb, []string{LeaderKey}, m.cfg.ID).Err()
		m.mu.Lock()
		m.leader = false
		m.mu.Unlock()
	}
	return nil
}

// acquireScript takes or renews the leader lease if it is free or already ours.
var acquireScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`)

var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

func (m *Maintainer) loop(ctx context.Context) {
	t := time.NewTicker(m.cfg.Tick)
	defer t.Stop()
	var lastStuck time.Time
	for {
		ok, err := acquireScript.Run(ctx, m.rdb, []string{LeaderKey}, m.cfg.ID, m.cfg.LeaderTTL.Milliseconds()).Int()
		leader := err == nil && ok == 1
		m.mu.Lock()
		was := m.leader
		m.leader = leader
		m.mu.Unlock()
		if leader != was {
			m.cfg.Logger.Info("maintenance leadership", "leader", leader, "id", m.cfg.ID)
		}
		if leader {
			m.tick(ctx, &lastStuck)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Maintainer) tick(ctx context.Context, lastStuck *time.Time) {
	if n, err := m.orch.ReapExpiredSteps(ctx, 200); err != nil {
		m.warn(ctx, "reap expired steps", err)
	} else if n > 0 {
		m.cfg.Logger.Info("re-queued steps of lost workers", "count", n)
	}
	if m.rec != nil {
		if err := m.rec.Tick(ctx); err != nil {
			m.warn(ctx, "reconcile redis", err)
		}
	}
	if now := m.cfg.Now(); now.Sub(*lastStuck) >= m.cfg.StuckEvery {
		*lastStuck = now
		if n, err := m.orch.DetectStuckJobs(ctx, 100); err != nil {
			m.warn(ctx, "detect stuck jobs", err)
		} else if n > 0 {
			m.cfg.Logger.Info("marked or failed stuck jobs", "count", n)
		}
	}
	if now := m.cfg.Now(); m.cfg.Retention > 0 && now.Sub(m.lastPurged) >= m.cfg.RetentionEvery {
		m.lastPurged = now
		if n, err := m.orch.DeleteExpiredJobs(ctx, m.cfg.Retention, m.cfg.RetentionBatch, 10); err != nil {
			m.warn(ctx, "delete jobs past retention", err)
		} else if n > 0 {
			m.cfg.Logger.Info("deleted jobs past retention", "count", n, "retention", m.cfg.Retention.String())
		}
	}
	if now := m.cfg.Now(); now.Sub(m.lastKey) >= m.cfg.KeysEvery {
		m.lastKey = now
		if _, err := m.orch.ExpireIdempotencyKeys(ctx); err != nil {
			m.warn(ctx, "expire idempotency keys", err)
		}
	}
}

func (m *Maintainer) warn(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	m.cfg.Logger.Warn(fmt.Sprintf("maintenance: %s", what), "err", err)
}

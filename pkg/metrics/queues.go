package metrics

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/startstop"
)

// DefaultQueueSampleInterval is QueueSamplerConfig.Interval's default.
const DefaultQueueSampleInterval = 10 * time.Second

// QueueStates are the values of cao_queue_depth's state label, in the order they are set.
var QueueStates = []string{"pending", "active", "scheduled", "retry", "archived"}

// QueueSamplerConfig tunes a QueueSampler; zero values take the defaults.
type QueueSamplerConfig struct {
	// Interval is the time between two samples. Default 10s.
	Interval time.Duration
	// Logger receives sampling failures. Default slog.Default().
	Logger *slog.Logger
}

// QueueSampler sets cao_queue_depth{queue,state} from Asynq's queue statistics (Inspector.GetQueueInfo)
// for every queue of the registry, in a background loop: a scrape never waits for Redis. Every
// process runs one; they all read the same Redis, so they report the same values (aggregate with
// max by (queue, state), not sum).
type QueueSampler struct {
	insp   *asynq.Inspector
	queues []string
	gauge  *prometheus.GaugeVec
	cfg    QueueSamplerConfig
	loop   startstop.Loop

	failing bool // the loop's last sample failed (the loop goroutine only)
}

// NewQueueSampler returns a sampler of queues (the registry's, registry.Queues) into m.QueueDepth. It
// shares rdb (asynq's inspector does not close a client it was given).
func (m *Metrics) NewQueueSampler(rdb redis.UniversalClient, queues []string, cfg QueueSamplerConfig) *QueueSampler {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultQueueSampleInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &QueueSampler{
		insp: asynq.NewInspectorFromRedisClient(rdb), queues: slices.Clone(queues), gauge: m.QueueDepth, cfg: cfg,
	}
}

// Start starts the sampling loop; its first sample is taken at once. Safe to call twice.
func (s *QueueSampler) Start(ctx context.Context) error {
	s.loop.Start(ctx, s.run)
	return nil
}

// Stop ends the loop and waits for a sample in progress (or for ctx). Safe to call twice.
func (s *QueueSampler) Stop(ctx context.Context) error {
	_, err := s.loop.Stop(ctx)
	return err
}

func (s *QueueSampler) run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if err := s.Sample(ctx); err != nil && !s.failing {
			s.failing = true
			s.cfg.Logger.Warn("queue depth: cannot read the queues' statistics; cao_queue_depth is left out until they can be read", "err", err)
		} else if err == nil && s.failing {
			s.failing = false
			s.cfg.Logger.Info("queue depth: queue statistics readable again")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample reads every queue's statistics once and sets the gauge. A queue nothing was ever enqueued on
// does not exist in Redis yet and reports zeros. A queue whose statistics cannot be read has its
// series removed rather than left at stale values; the first such error is returned.
func (s *QueueSampler) Sample(ctx context.Context) error {
	existing, err := s.insp.Queues()
	if err != nil {
		for _, q := range s.queues {
			s.gauge.DeletePartialMatch(prometheus.Labels{"queue": q})
		}
		return err
	}
	var first error
	for _, q := range s.queues {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var counts [5]int // in QueueStates order
		if slices.Contains(existing, q) {
			info, err := s.insp.GetQueueInfo(q)
			if err != nil {
				s.gauge.DeletePartialMatch(prometheus.Labels{"queue": q})
				if first == nil {
					first = err
				}
				continue
			}
			counts = [5]int{info.Pending, info.Active, info.Scheduled, info.Retry, info.Archived}
		}
		for i, state := range QueueStates {
			s.gauge.WithLabelValues(q, state).Set(float64(counts[i]))
		}
	}
	return first
}

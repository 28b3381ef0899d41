package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/testinfra"
)

// depths returns cao_queue_depth's values for queue, by state.
func depths(m *metrics.Metrics, queue string) map[string]int {
	out := map[string]int{}
	for _, state := range metrics.QueueStates {
		out[state] = int(testutil.ToFloat64(m.QueueDepth.WithLabelValues(queue, state)))
	}
	return out
}

func TestQueueSamplerReadsEveryState(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	rdb := testinfra.Redis(t).Client // asynq's keys: a logical database of its own
	q := asynq.NewClientFromRedisClient(rdb)
	for range 3 {
		_, err := q.EnqueueContext(ctx, asynq.NewTask("step", nil), asynq.Queue("heavy"))
		require.NoError(t, err)
	}
	for range 2 {
		_, err := q.EnqueueContext(ctx, asynq.NewTask("step", nil), asynq.Queue("heavy"), asynq.ProcessIn(time.Hour))
		require.NoError(t, err)
	}
	info, err := q.EnqueueContext(ctx, asynq.NewTask("step", nil), asynq.Queue("medium"))
	require.NoError(t, err)
	require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).ArchiveTask("medium", info.ID))

	m := metrics.New(nil)
	s := m.NewQueueSampler(rdb, []string{"heavy", "medium", "default"}, metrics.QueueSamplerConfig{Interval: 10 * time.Millisecond})
	require.NoError(t, s.Sample(ctx))
	require.Equal(t, map[string]int{"pending": 3, "active": 0, "scheduled": 2, "retry": 0, "archived": 0}, depths(m, "heavy"))
	require.Equal(t, map[string]int{"pending": 0, "active": 0, "scheduled": 0, "retry": 0, "archived": 1}, depths(m, "medium"))
	// Nothing was ever enqueued on "default": asynq does not know it yet; it reports zeros.
	require.Equal(t, map[string]int{"pending": 0, "active": 0, "scheduled": 0, "retry": 0, "archived": 0}, depths(m, "default"))
	require.Equal(t, 15, testutil.CollectAndCount(m.QueueDepth))

	// In the background: a new task shows at the next sample, and Stop ends the loop.
	require.NoError(t, s.Start(ctx))
	require.NoError(t, s.Start(ctx), "a second Start does nothing")
	_, err = q.EnqueueContext(ctx, asynq.NewTask("step", nil), asynq.Queue("default"))
	require.NoError(t, err)
	testinfra.Eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(m.QueueDepth.WithLabelValues("default", "pending")) == 1
	}, "the sampler did not see the new task")
	require.NoError(t, s.Stop(ctx))
	require.NoError(t, s.Stop(ctx), "a second Stop does nothing")
}

func TestQueueSamplerDropsWhatItCannotRead(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, time.Minute)
	m := metrics.New(nil)
	opt, err := redis.ParseURL(testinfra.RedisURL())
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	s := m.NewQueueSampler(rdb, []string{"default"}, metrics.QueueSamplerConfig{})
	require.NoError(t, s.Sample(ctx))
	require.Equal(t, 5, testutil.CollectAndCount(m.QueueDepth))

	// Redis cannot be read: no stale values are reported.
	require.NoError(t, rdb.Close())
	require.Error(t, s.Sample(ctx))
	require.Equal(t, 0, testutil.CollectAndCount(m.QueueDepth))
}

func TestQueueSamplerStopsWithItsContext(t *testing.T) {
	t.Parallel()
	m := metrics.New(nil)
	rdb := testinfra.Redis(t).Client
	s := m.NewQueueSampler(rdb, []string{"default"}, metrics.QueueSamplerConfig{})
	require.NoError(t, s.Start(context.Background()))
	testinfra.Eventually(t, 10*time.Second, func() bool { return testutil.CollectAndCount(m.QueueDepth) == 5 },
		"the first sample is taken at start")
	require.NoError(t, s.Stop(testinfra.Context(t, 10*time.Second)))
}

package dispatch

import (
	"context"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

// TestAsynqLayoutPinned fails when the Asynq in the build is not the release asynqkeys.go describes,
// and checks the layout against that release's behaviour: enqueueing registers the queue in
// asynqQueuesKey.
func TestAsynqLayoutPinned(t *testing.T) {
	t.Parallel()
	gomod, err := os.ReadFile("../go.mod")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^\s*github\.com/hibiken/asynq (v\S+)`).FindSubmatch(gomod)
	require.NotNil(t, m, "asynq is required in pkg/go.mod")
	require.Equal(t, asynqVersion, string(m[1]), "Asynq changed: check its Redis layout (asynqkeys.go) before updating asynqVersion")

	rdb := testinfra.Redis(t)
	ctx := context.Background()
	q := asynq.NewClientFromRedisClient(rdb.Client)
	_, err = q.EnqueueContext(ctx, asynq.NewTask("t", nil), asynq.Queue("pinned"), asynq.ProcessIn(time.Hour))
	require.NoError(t, err)
	members, err := rdb.Client.SMembers(ctx, asynqQueuesKey).Result()
	require.NoError(t, err)
	require.Contains(t, members, "pinned")
	require.Equal(t, "asynq:{pinned}:lease", asynqLeaseKey("pinned"))
}

package redisconntest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/redisconn/redisconntest"
)

func TestSlotMatchesClusterKeyslot(t *testing.T) {
	t.Parallel()
	cl := redisconntest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The CRC16 check value of the specification.
	require.Equal(t, 0x31C3, redisconntest.Slot("123456789"))
	keys := []string{"", "foo", "bar", "123456789", "{user1000}.following", "{user1000}.followers",
		"foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "{", "}", "{}", "}{x}", "a{b", "é{ü}",
		"cao:sem:{llm}:holders", "cao:sem:{llm}:waiters", "asynq:{default}:pending", "cao:rate:{api:acme}"}
	for i := range 200 {
		keys = append(keys, fmt.Sprintf("key-%d", i))
	}
	for _, k := range keys {
		want, err := cl.KeySlot(ctx, k)
		require.NoError(t, err)
		require.Equal(t, int(want), redisconntest.Slot(k), "slot of %q", k)
	}
}

package limiter

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/cao-run/cao/pkg/testinfra"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bundle is what most tests need: a Semaphore and RateLimiter on real Redis under a key prefix of
// their own.
type bundle struct {
	ctx    context.Context
	rdb    *redis.Client
	prefix string
	sem    *Semaphore
	rate   *RateLimiter
}

func setup(t *testing.T) *bundle {
	t.Helper()
	rdb, prefix := testinfra.KeyPrefix(t)
	cfg := Config{Prefix: prefix}
	return &bundle{
		ctx:    testinfra.Context(t, 30*time.Second),
		rdb:    rdb,
		prefix: prefix,
		sem:    NewSemaphore(rdb, cfg),
		rate:   NewRateLimiter(rdb, cfg),
	}
}

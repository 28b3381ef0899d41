package maintenance_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/maintenance"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

func TestOneLeaderAtATimeAndFailover(t *testing.T) {
	t.Parallel()
	st, _ := teststore.Postgres(t)
	rdb := testinfra.Redis(t)
	reg, err := registry.Parse("r.yaml", []byte("services: {s: {kind: mock}}\nfeatures: {f: {steps: [{name: a, service: s}]}}\n"),
		func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	orch := orchestrator.New(st, reg, nil, nil, orchestrator.Config{})
	cfg := maintenance.Config{Tick: 20 * time.Millisecond, LeaderTTL: 300 * time.Millisecond}
	cfg.ID = "m1"
	m1 := maintenance.New(orch, nil, rdb.Client, cfg)
	cfg.ID = "m2"
	m2 := maintenance.New(orch, nil, rdb.Client, cfg)
	ctx := context.Background()
	require.NoError(t, m1.Start(ctx))
	testinfra.Eventually(t, 5*time.Second, m1.IsLeader, "m1 leads")
	require.NoError(t, m2.Start(ctx))
	defer func() { _ = m2.Stop(ctx) }()
	// m2 never leads while m1 renews.
	for range 20 {
		require.False(t, m1.IsLeader() && m2.IsLeader(), "two leaders")
		require.False(t, m2.IsLeader())
		<-time.After(10 * time.Millisecond)
	}
	require.NoError(t, m1.Stop(ctx))
	require.False(t, m1.IsLeader())
	testinfra.Eventually(t, 5*time.Second, m2.IsLeader, "m2 takes over after m1 stops")
}

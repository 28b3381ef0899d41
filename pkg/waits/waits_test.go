package waits_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/waits"
)

func TestNotesRecordReadClear(t *testing.T) {
	t.Parallel()
	rdb, prefix := testinfra.KeyPrefix(t)
	ctx := testinfra.Context(t, 10*time.Second)
	b := waits.New(rdb, prefix)

	got, err := b.Job(ctx, "job-1")
	require.NoError(t, err)
	require.Empty(t, got, "no notes yet")

	since := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	until := since.Add(4200 * time.Millisecond)
	require.NoError(t, b.Record(ctx, "job-1", "ask", waits.Note{Reason: waits.Slot, Service: "llm", Tenant: "acme", Since: since}))
	require.NoError(t, b.Record(ctx, "job-1", "summarize", waits.Note{Reason: waits.Hold, Service: "llm", Since: since, Until: until, Budget: "tokens"}))
	require.NoError(t, b.Record(ctx, "job-2", "ask", waits.Note{Reason: waits.Rate, Service: "search", Since: since}))

	got, err = b.Job(ctx, "job-1")
	require.NoError(t, err)
	require.Equal(t, map[string]waits.Note{
		"ask":       {Reason: waits.Slot, Service: "llm", Tenant: "acme", Since: since},
		"summarize": {Reason: waits.Hold, Service: "llm", Since: since, Until: until, Budget: "tokens"},
	}, got)
	ttl, err := rdb.PTTL(ctx, prefix+"waits:{job-1}").Result()
	require.NoError(t, err)
	require.Greater(t, ttl, time.Minute, "notes expire by themselves when nobody clears them")

	require.NoError(t, b.Clear(ctx, "job-1", "ask"))
	got, err = b.Job(ctx, "job-1")
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Contains(t, got, "summarize")
}

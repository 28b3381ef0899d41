package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

var retentionTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"DeleteFinishedJobs", testDeleteFinishedJobs},
}

func testDeleteFinishedJobs(t *testing.T, s store.Store) {
	ctx := testContext(t)
	// finished makes a job with steps, events, an attempt, an input and a bound Idempotency-Key, ended
	// at `at`.
	finished := func(status store.JobStatus, at time.Time, key string) *store.Change {
		c := createChange(base)
		c.IdempotencyKey = key
		if key != "" {
			require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
				return tx.InsertIdempotencyKey(ctx, &store.IdempotencyRecord{Key: key, RequestHash: "h", CreatedAt: base, ExpiresAt: base.Add(time.Hour)})
			}))
		}
		require.NoError(t, s.Apply(ctx, c))
		if status != "" {
			j := *c.Job
			j.Status, j.FinishedAt = status, &at
			j.LastSeq++
			require.NoError(t, s.Apply(ctx, &store.Change{Job: &j, Version: c.Job.Version,
				Attempts: []store.Attempt{{Step: "a", Run: 1, Attempt: 1, Status: "failed", StartedAt: at}},
				Events:   []store.Event{{Seq: j.LastSeq, Type: store.EventJob, Status: string(status), At: at}}}))
		}
		return c
	}
	old1 := finished(store.JobCompleted, base.Add(time.Second), "key-old")
	old2 := finished(store.JobFailed, base.Add(2*time.Second), "")
	fresh := finished(store.JobCancelled, base.Add(time.Hour), "")
	running := finished("", time.Time{}, "")
	pending := endWithWebhook(t, s, base.Add(3*time.Second)) // FAILED, its webhook not delivered yet

	cutoff := base.Add(time.Minute)
	n, err := s.DeleteFinishedJobs(ctx, cutoff, 1)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "one batch of one")
	_, err = s.GetJob(ctx, store.AllTenants, old1.Job.ID)
	require.ErrorIs(t, err, store.ErrNotFound, "oldest first")
	n, err = s.DeleteFinishedJobs(ctx, cutoff, 100)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	n, err = s.DeleteFinishedJobs(ctx, cutoff, 100)
	require.NoError(t, err)
	require.Zero(t, n)

	for _, gone := range []*store.Change{old1, old2} {
		_, err := s.GetJob(ctx, store.AllTenants, gone.Job.ID)
		require.ErrorIs(t, err, store.ErrNotFound)
		steps, err := s.GetSteps(ctx, gone.Job.ID)
		require.NoError(t, err)
		require.Empty(t, steps)
		evs, err := s.ListEvents(ctx, gone.Job.ID, 0, 0)
		require.NoError(t, err)
		require.Empty(t, evs)
		inputs, err := s.GetJobInputs(ctx, gone.Job.ID)
		require.NoError(t, err)
		require.Empty(t, inputs)
		attempts, err := s.GetAttempts(ctx, gone.Job.ID)
		require.NoError(t, err)
		require.Empty(t, attempts)
	}
	_, err = s.GetIdempotencyKey(ctx, "", "key-old")
	require.ErrorIs(t, err, store.ErrNotFound, "the key bound to a deleted job goes with it")
	for _, kept := range []string{fresh.Job.ID, running.Job.ID, pending.JobID} {
		_, err := s.GetJob(ctx, store.AllTenants, kept)
		require.NoError(t, err, "kept: finished after the cutoff, not terminal, or webhook pending")
		evs, err := s.ListEvents(ctx, kept, 0, 0)
		require.NoError(t, err)
		require.NotEmpty(t, evs, "a kept job keeps its events")
	}
	attempts, err := s.GetAttempts(ctx, fresh.Job.ID)
	require.NoError(t, err)
	require.Len(t, attempts, 1, "a kept job keeps its attempts")

	// Once its delivery is over, the job with the webhook goes too.
	claimed, err := s.ClaimWebhooks(ctx, base.Add(time.Hour), base.Add(2*time.Hour), 10)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	claimed[0].DeliveredAt = ptr(base.Add(time.Hour))
	require.NoError(t, s.FinishWebhook(ctx, &claimed[0]))
	n, err = s.DeleteFinishedJobs(ctx, cutoff, 100)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	ds, err := s.ListWebhookDeliveries(ctx, pending.JobID)
	require.NoError(t, err)
	require.Empty(t, ds)
}

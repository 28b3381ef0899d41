package storetest

import (
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

// webhookTests check the durable completion-webhook deliveries.
var webhookTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"WebhooksInsertedWithTheChange", testWebhooksInserted},
	{"WebhooksClaimAndFinish", testWebhooksClaimAndFinish},
	{"WebhooksConcurrentClaimers", testWebhooksConcurrentClaimers},
}

// endWithWebhook creates a job with a webhook URL and applies the change that fails it, which
// carries one delivery; it returns the delivery.
func endWithWebhook(t *testing.T, s store.Store, at time.Time) store.WebhookDelivery {
	t.Helper()
	ctx := testContext(t)
	c := createChange(at)
	c.Job.WebhookURL = "http://hooks.example:8080/cao"
	require.NoError(t, s.Apply(ctx, c))
	j := *c.Job
	j.Status, j.FinishedAt, j.UpdatedAt = store.JobFailed, ptr(at), at
	j.LastSeq++
	d := store.WebhookDelivery{ID: uuid.NewString(), URL: j.WebhookURL, Type: "job.failed",
		Payload: []byte(`{"type":"job.failed","data":{"id":"` + j.ID + `"}}`), NextAttemptAt: at, CreatedAt: at}
	require.NoError(t, s.Apply(ctx, &store.Change{
		Job: &j, Version: c.Job.Version, Webhooks: []store.WebhookDelivery{d},
		Events: []store.Event{{Seq: j.LastSeq, Type: store.EventJob, Status: "FAILED", At: at}},
	}))
	d.JobID = j.ID
	return d
}

func testWebhooksInserted(t *testing.T, s store.Store) {
	ctx := testContext(t)
	d := endWithWebhook(t, s, base)
	job, err := s.GetJob(ctx, store.AllTenants, d.JobID)
	require.NoError(t, err)
	require.Equal(t, "http://hooks.example:8080/cao", job.WebhookURL)
	loaded, _, err := s.LoadJob(ctx, d.JobID)
	require.NoError(t, err)
	require.Equal(t, job.WebhookURL, loaded.WebhookURL)

	got, err := s.ListWebhookDeliveries(ctx, d.JobID)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, d.ID, got[0].ID)
	require.Equal(t, "job.failed", got[0].Type)
	require.Equal(t, string(d.Payload), string(got[0].Payload), "the payload is kept byte for byte (it is signed)")
	require.Zero(t, got[0].Attempts)
	require.Nil(t, got[0].DeliveredAt)

	// A change that loses its compare-and-set writes no delivery.
	stale := *job
	stale.LastSeq++
	err = s.Apply(ctx, &store.Change{Job: &stale, Version: job.Version - 1,
		Webhooks: []store.WebhookDelivery{{URL: "http://x", Type: "job.failed", Payload: []byte("{}")}}})
	require.ErrorIs(t, err, store.ErrConflict)
	got, err = s.ListWebhookDeliveries(ctx, d.JobID)
	require.NoError(t, err)
	require.Len(t, got, 1)
}

func testWebhooksClaimAndFinish(t *testing.T, s store.Store) {
	ctx := testContext(t)
	d := endWithWebhook(t, s, base)

	none, err := s.ClaimWebhooks(ctx, base.Add(-time.Second), base.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Empty(t, none, "not due yet")

	claimed, err := s.ClaimWebhooks(ctx, base, base.Add(30*time.Second), 10)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	c := claimed[0]
	require.Equal(t, 1, c.Attempts)
	require.Equal(t, base.Add(30*time.Second), c.NextAttemptAt)
	again, err := s.ClaimWebhooks(ctx, base.Add(10*time.Second), base.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Empty(t, again, "a claimed delivery is not claimed again before its claim expires")

	// The attempt failed: due again in a minute.
	c.LastStatus, c.LastError, c.NextAttemptAt = 503, "receiver answered 503", base.Add(time.Minute)
	require.NoError(t, s.FinishWebhook(ctx, &c))
	// A claim that expired is taken over; the first claimer's late finish is refused.
	taken, err := s.ClaimWebhooks(ctx, base.Add(time.Minute), base.Add(2*time.Minute), 10)
	require.NoError(t, err)
	require.Len(t, taken, 1)
	require.Equal(t, 2, taken[0].Attempts)
	require.Equal(t, 503, taken[0].LastStatus)
	late := c
	late.DeliveredAt = ptr(base.Add(time.Minute))
	require.ErrorIs(t, s.FinishWebhook(ctx, &late), store.ErrConflict)

	delivered := taken[0]
	delivered.LastStatus, delivered.LastError, delivered.DeliveredAt = 200, "", ptr(base.Add(61*time.Second))
	require.NoError(t, s.FinishWebhook(ctx, &delivered))
	rest, err := s.ClaimWebhooks(ctx, base.Add(time.Hour), base.Add(2*time.Hour), 10)
	require.NoError(t, err)
	require.Empty(t, rest, "a delivered webhook is never claimed again")
	got, err := s.ListWebhookDeliveries(ctx, d.JobID)
	require.NoError(t, err)
	require.Equal(t, 200, got[0].LastStatus)
	require.Equal(t, base.Add(61*time.Second), *got[0].DeliveredAt)
	require.Equal(t, 2, got[0].Attempts)
}

func testWebhooksConcurrentClaimers(t *testing.T, s store.Store) {
	ctx := testContext(t)
	want := map[string]bool{}
	for i := range 12 {
		want[endWithWebhook(t, s, base.Add(time.Duration(i)*time.Millisecond)).ID] = true
	}
	var (
		mu  sync.Mutex
		got = map[string]int{}
		wg  sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := s.ClaimWebhooks(ctx, base.Add(time.Second), base.Add(time.Hour), 2)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ds) == 0 {
					return
				}
				mu.Lock()
				for _, d := range ds {
					got[d.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, got, len(want))
	for id, n := range got {
		require.True(t, want[id])
		require.Equal(t, 1, n, "delivery %s claimed by two claimers", id)
	}
}

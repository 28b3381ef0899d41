package webhook

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/view"
)

// body is the JSON a receiver gets.
type body struct {
	Type      string   `json:"type"`
	Timestamp string   `json:"timestamp"`
	Data      view.Job `json:"data"`
}

// For returns the delivery of the webhook for a job that has just become terminal (as the change
// that ends it leaves it), due at once; ok is false when the job has no webhook_url.
func For(job *store.Job, at time.Time) (d store.WebhookDelivery, ok bool, err error) {
	if job.WebhookURL == "" || !job.Status.Terminal() {
		return store.WebhookDelivery{}, false, nil
	}
	// The contract's type: job.completed, job.failed or job.cancelled.
	typ := "job." + strings.ToLower(string(job.Status))
	b, err := json.Marshal(body{Type: typ, Timestamp: at.UTC().Format(time.RFC3339Nano), Data: view.Summary(job)})
	if err != nil {
		return store.WebhookDelivery{}, false, err
	}
	return store.WebhookDelivery{
		ID: uuid.NewString(), JobID: job.ID, URL: job.WebhookURL, Type: typ, Payload: b,
		NextAttemptAt: at, CreatedAt: at,
	}, true, nil
}

package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/cao-run/cao/pkg/startstop"
	"github.com/cao-run/cao/pkg/store"
)

// Store is what a Deliverer needs of the database.
type Store interface {
	ClaimWebhooks(ctx context.Context, now, claimUntil time.Time, limit int) ([]store.WebhookDelivery, error)
	FinishWebhook(ctx context.Context, d *store.WebhookDelivery) error
}

// DefaultSchedule is the wait after each failed attempt (the Standard Webhooks reference schedule):
// 5s, 5m, 30m, 2h, 5h, 10h, 10h. Eight attempts over about 27.5 hours; then the delivery is given up.
var DefaultSchedule = []time.Duration{
	5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
}

// Defaults of Config.
const (
	DefaultPollInterval = time.Second
	DefaultTimeout      = 10 * time.Second
	DefaultBatch        = 16
	// maxErrorBody is how much of a failed answer's body is kept as last_error.
	maxErrorBody = 200
)

// Config tunes a Deliverer; zero values take the defaults.
type Config struct {
	// Secret is CAO_WEBHOOK_SECRET, "whsec_<base64>", the Standard Webhooks signing key.
	Secret string
	// PollInterval is how often due deliveries are looked for (default 1s).
	PollInterval time.Duration
	// Timeout bounds one attempt, connection to last byte (default 10s).
	Timeout time.Duration
	// Batch is how many deliveries one poll claims and sends at once (default 16).
	Batch int
	// Schedule is the wait after each failed attempt; after the last, the delivery is given up
	// (default DefaultSchedule).
	Schedule []time.Duration
	// Client sends the requests (default: one that never follows redirects).
	Client *http.Client
	Now    func() time.Time
	Logger *slog.Logger
}

// ParseSecret checks a CAO_WEBHOOK_SECRET value ("whsec_" and base64 of at least 24 bytes).
func ParseSecret(secret string) error {
	if !strings.HasPrefix(secret, "whsec_") {
		return errors.New(`expected "whsec_" followed by base64 (e.g. whsec_` + "$(openssl rand -base64 32))")
	}
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return errors.New("the part after whsec_ is not valid base64")
	}
	if _, err := wh.Sign("probe", time.Unix(0, 0), nil); err != nil {
		return err
	}
	if n := len(strings.TrimPrefix(secret, "whsec_")) * 3 / 4; n < 24 {
		return fmt.Errorf("the key is %d bytes; use at least 24 (32 recommended)", n)
	}
	return nil
}

// Deliverer posts due webhook deliveries until each is delivered or given up. Every worker runs
// one; the database hands each delivery to one of them at a time.
type Deliverer struct {
	st     Store
	cfg    Config
	signer *standardwebhooks.Webhook
	loop   startstop.Loop
}

// NewDeliverer returns a deliverer over st; the secret must pass ParseSecret.
func NewDeliverer(st Store, cfg Config) (*Deliverer, error) {
	if err := ParseSecret(cfg.Secret); err != nil {
		return nil, fmt.Errorf("CAO_WEBHOOK_SECRET: %w", err)
	}
	signer, err := standardwebhooks.NewWebhook(cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("CAO_WEBHOOK_SECRET: %w", err)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.Schedule == nil {
		cfg.Schedule = DefaultSchedule
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			// A redirect is an answer like any other: not 2xx, so not delivered, and never followed
			// (it could point anywhere, including outside the allow-list).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Deliverer{st: st, cfg: cfg, signer: signer}, nil
}

// Start runs the delivery loop until Stop.
func (d *Deliverer) Start(ctx context.Context) error {
	d.loop.Start(ctx, d.run)
	return nil
}

// Stop ends the loop, letting attempts in flight finish (or ctx end).
func (d *Deliverer) Stop(ctx context.Context) error {
	_, err := d.loop.Stop(ctx)
	return err
}

func (d *Deliverer) run(ctx context.Context) {
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		// Keep going while full batches come back: a backlog drains without waiting a poll each.
		for n := d.Poll(ctx); n == d.cfg.Batch && ctx.Err() == nil; n = d.Poll(ctx) {
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll claims the due deliveries, attempts each once (concurrently) and records the outcomes; it
// returns how many it claimed.
func (d *Deliverer) Poll(ctx context.Context) int {
	now := d.cfg.Now()
	// A claim outlives the attempt: if this process dies mid-attempt, another takes it after this.
	due, err := d.st.ClaimWebhooks(ctx, now, now.Add(d.cfg.Timeout+30*time.Second), d.cfg.Batch)
	if err != nil {
		if ctx.Err() == nil {
			d.cfg.Logger.Warn("claim webhook deliveries", "err", err)
		}
		return 0
	}
	var wg sync.WaitGroup
	for i := range due {
		wg.Add(1)
		go func(w *store.WebhookDelivery) {
			defer wg.Done()
			d.attempt(context.WithoutCancel(ctx), w)
		}(&due[i])
	}
	wg.Wait()
	return len(due)
}

// attempt sends one delivery once and records the outcome.
func (d *Deliverer) attempt(ctx context.Context, w *store.WebhookDelivery) {
	status, err := d.send(ctx, w)
	now := d.cfg.Now()
	w.LastStatus = status
	log := d.cfg.Logger.With("job_id", w.JobID, "webhook_id", w.ID, "attempt", w.Attempts, "type", w.Type)
	switch {
	case err == nil:
		w.LastError, w.DeliveredAt = "", &now
		log.Info("webhook delivered", "http_status", status)
	case w.Attempts > len(d.cfg.Schedule):
		w.LastError, w.GaveUpAt = err.Error(), &now
		log.Warn("webhook given up", "http_status", status, "err", err)
	default:
		w.LastError = err.Error()
		w.NextAttemptAt = now.Add(d.cfg.Schedule[w.Attempts-1])
		log.Info("webhook attempt failed; will retry", "http_status", status, "err", err, "retry_at", w.NextAttemptAt)
	}
	if ferr := d.st.FinishWebhook(ctx, w); ferr != nil {
		// Conflict: our claim expired and another deliverer took it over; it records its own attempt.
		log.Warn("record webhook attempt", "err", ferr)
	}
}

// send posts the payload, signed, and reports the answer's status; a non-2xx answer is an error.
func (d *Deliverer) send(ctx context.Context, w *store.WebhookDelivery) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	ts := d.cfg.Now()
	sig, err := d.signer.Sign(w.ID, ts, w.Payload)
	if err != nil {
		return 0, fmt.Errorf("sign: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, strings.NewReader(string(w.Payload)))
	if err != nil {
		return 0, fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "CAO-Webhooks/1")
	req.Header.Set("webhook-id", w.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("no answer within %s", d.cfg.Timeout)
		}
		return 0, fmt.Errorf("send: %w", errors.Unwrap(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > maxErrorBody {
		msg = msg[:maxErrorBody]
	}
	return resp.StatusCode, fmt.Errorf("receiver answered %d %s", resp.StatusCode, msg)
}

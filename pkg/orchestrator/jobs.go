package orchestrator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/schema"
	"github.com/cao-run/cao/pkg/store"
)

// CreateRequest asks for a new job.
type CreateRequest struct {
	Tenant         string // who owns the job (store.DefaultTenant when empty)
	Feature        string
	Input          json.RawMessage // a JSON object; empty means {}
	IdempotencyKey string          // optional
	WebhookURL     string          // optional: receives a signed POST when the job ends (see package webhook)
}

// JobView is a job with its steps and their attempts, as returned by the API.
type JobView struct {
	Job      store.Job
	Steps    []store.Step
	Attempts []store.Attempt
	Webhooks []store.WebhookDelivery // completion webhook deliveries, oldest first (none without webhook_url)
}

// CreateJob validates the input against the feature, stores the job, its steps and the tasks of its
// root steps in one transaction. With an idempotency key, a repeat of the same request returns the
// original job (created=false).
func (o *Orchestrator) CreateJob(ctx context.Context, req CreateRequest) (view *JobView, created bool, err error) {
	f, ok := o.reg.Feature(req.Feature)
	if !ok {
		return nil, false, &UnknownNameError{Kind: ErrFeatureNotFound, Name: req.Feature, Valid: o.reg.FeatureNames()}
	}
	input, err := o.checkInput(f, req.Input)
	if err != nil {
		return nil, false, err
	}
	hook := ""
	if req.WebhookURL != "" {
		if hook, err = o.cfg.Webhooks.Check(req.WebhookURL); err != nil {
			return nil, false, err
		}
	}
	tenant := req.Tenant
	if tenant == "" {
		tenant = store.DefaultTenant
	}
	if req.IdempotencyKey == "" {
		v, err := o.insertJob(ctx, tenant, f, input, hook, "")
		return v, err == nil, err
	}
	hash := requestHash(req.Feature, input, hook)
	for range 3 {
		existing, err := o.reserveKey(ctx, tenant, req.IdempotencyKey, hash)
		if err != nil {
			return nil, false, err
		}
		if existing == nil {
			v, err := o.insertJob(ctx, tenant, f, input, hook, req.IdempotencyKey)
			if err != nil {
				o.releaseKey(ctx, tenant, req.IdempotencyKey)
				return nil, false, err
			}
			return v, true, nil
		}
		if existing.RequestHash != hash {
			return nil, false, ErrIdempotencyMismatch
		}
		if existing.JobID == "" {
			if o.now().Sub(existing.CreatedAt) < o.cfg.IdempotencyAbandonAfter {
				return nil, false, ErrIdempotencyInFlight
			}
			// The first request died before creating its job: take the key over.
			o.releaseKey(ctx, tenant, req.IdempotencyKey)
			continue
		}
		v, err := o.GetJob(ctx, store.TenantScope(tenant), existing.JobID)
		if errors.Is(err, ErrJobNotFound) {
			o.releaseKey(ctx, tenant, req.IdempotencyKey)
			continue
		}
		return v, false, err
	}
	return nil, false, ErrIdempotencyInFlight
}

// reserveKey stores the tenant's key for a first request (returning nil) or returns the live record.
func (o *Orchestrator) reserveKey(ctx context.Context, tenant, key, hash string) (*store.IdempotencyRecord, error) {
	now := o.now()
	var existing *store.IdempotencyRecord
	err := o.store.Tx(ctx, func(tx store.Tx) error {
		existing = nil
		err := tx.InsertIdempotencyKey(ctx, &store.IdempotencyRecord{
			Tenant: tenant, Key: key, RequestHash: hash, CreatedAt: now, ExpiresAt: now.Add(o.cfg.IdempotencyTTL),
		})
		if err == nil || !errors.Is(err, store.ErrDuplicate) {
			return err
		}
		return errDuplicateKey
	})
	if errors.Is(err, errDuplicateKey) {
		rec, gerr := o.store.GetIdempotencyKey(ctx, tenant, key)
		if errors.Is(gerr, store.ErrNotFound) {
			return o.reserveKey(ctx, tenant, key, hash)
		}
		if gerr != nil {
			return nil, gerr
		}
		if rec.ExpiresAt.Before(now) {
			o.releaseKey(ctx, tenant, key)
			return o.reserveKey(ctx, tenant, key, hash)
		}
		existing = rec
		return existing, nil
	}
	return nil, err
}

var errDuplicateKey = errors.New("duplicate idempotency key")

func (o *Orchestrator) releaseKey(ctx context.Context, tenant, key string) {
	err := o.store.Tx(context.WithoutCancel(ctx), func(tx store.Tx) error {
		return tx.DeleteIdempotencyKey(ctx, tenant, key)
	})
	if err != nil {
		o.cfg.Logger.Warn("release idempotency key", "err", err)
	}
}

func requestHash(feature string, input json.RawMessage, webhookURL string) string {
	h := sha256.New()
	h.Write([]byte(feature))
	h.Write([]byte{0})
	h.Write(input)
	if webhookURL != "" {
		h.Write([]byte{0})
		h.Write([]byte(webhookURL))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkInput parses and validates input against the feature's schema; it returns the canonical JSON.
func (o *Orchestrator) checkInput(f *registry.Feature, raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		raw = json.RawMessage("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &InputError{Fields: []schema.FieldError{{Field: "$", Message: "must be valid JSON: " + err.Error()}}}
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, &InputError{Fields: []schema.FieldError{{Field: "$", Message: "must be an object"}}}
	}
	if f.Input != nil {
		if errs := f.Input.Validate(v); len(errs) > 0 {
			return nil, &InputError{Fields: errs}
		}
	}
	// What passes the schema must also be storable: no NUL character, no number out of range.
	if u := store.CheckValue(v, "$"); u != nil {
		field := strings.TrimPrefix(u.Path, "$.")
		return nil, &InputError{Fields: []schema.FieldError{{Field: field, Message: u.Reason}}}
	}
	canon, err := json.Marshal(v)
	if err != nil {
		return nil, &InputError{Fields: []schema.FieldError{{Field: "$", Message: err.Error()}}}
	}
	return canon, nil
}

func (o *Orchestrator) insertJob(ctx context.Context, tenant string, f *registry.Feature, input json.RawMessage, hook, key string) (*JobView, error) {
	now := o.now()
	// A version 7 UUID begins with its creation time, so a later job's id sorts after an earlier
	// one's: the indexes keyed by job id (jobs, steps, events, attempts, inputs) are written at
	// their end, in pages already in memory, instead of at a random place each.
	job := &store.Job{
		ID: uuid.Must(uuid.NewV7()).String(), Tenant: tenant, WebhookURL: hook, FeatureName: f.Name, Status: store.JobPending, Input: input, InputVersion: 1,
		IdempotencyKey: key, CreatedAt: now, UpdatedAt: now,
	}
	steps := make([]store.Step, len(f.Steps))
	for i, sd := range f.Steps {
		steps[i] = store.Step{
			JobID: job.ID, Name: sd.Name, Position: i, Service: sd.Service, Queue: sd.Queue,
			Needs: slices.Clone(sd.Needs), Status: store.StepPending, Run: 1, CreatedAt: now, UpdatedAt: now,
		}
		if steps[i].Needs == nil {
			steps[i].Needs = []string{}
		}
	}
	u := o.newUnit(ctx, job, steps)
	u.setJob(store.JobPending, "", "created")
	u.advance()
	u.inputs = append(u.inputs, store.JobInput{JobID: job.ID, Version: 1, Input: input, CreatedAt: now})
	c := u.change()
	c.Create, c.IdempotencyKey = true, key
	c.Steps = c.Steps[:0]
	for _, s := range u.steps {
		c.Steps = append(c.Steps, store.StepChange{Step: *s})
	}
	if err := o.store.Apply(ctx, c); err != nil {
		if errors.Is(err, store.ErrConflict) {
			// The key was taken over or expired while this request ran: let the client try again.
			return nil, fmt.Errorf("%w: the key changed hands while the job was created", ErrIdempotencyInFlight)
		}
		return nil, fmt.Errorf("create job: %w", err)
	}
	o.afterCommit(ctx, u)
	sn := u.snapshot()
	return &JobView{Job: sn.job, Steps: sn.steps}, nil
}

// Job returns the job without its steps; ErrJobNotFound if it does not exist or is outside scope
// (another tenant's job answers exactly as a job that does not exist).
func (o *Orchestrator) Job(ctx context.Context, scope store.Scope, id string) (*store.Job, error) {
	job, err := o.store.GetJob(ctx, scope, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrJobNotFound
	}
	return job, err
}

// GetJob returns the job in scope with its steps and attempts.
func (o *Orchestrator) GetJob(ctx context.Context, scope store.Scope, id string) (*JobView, error) {
	job, err := o.Job(ctx, scope, id)
	if err != nil {
		return nil, err
	}
	steps, err := o.store.GetSteps(ctx, id)
	if err != nil {
		return nil, err
	}
	attempts, err := o.store.GetAttempts(ctx, id)
	if err != nil {
		return nil, err
	}
	v := &JobView{Job: *job, Steps: steps, Attempts: attempts}
	if job.WebhookURL != "" {
		if v.Webhooks, err = o.store.ListWebhookDeliveries(ctx, id); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// ListJobs returns a page of jobs, newest first, and the cursor of the next page (nil at the end).
func (o *Orchestrator) ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, *store.Cursor, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	want := f.Limit
	f.Limit = want + 1
	jobs, err := o.store.ListJobs(ctx, f)
	if err != nil {
		return nil, nil, err
	}
	if len(jobs) <= want {
		return jobs, nil, nil
	}
	jobs = jobs[:want]
	last := jobs[want-1]
	return jobs, &store.Cursor{CreatedAt: last.CreatedAt, ID: last.ID}, nil
}

// Events returns the job's events after afterSeq (ErrJobNotFound if the job does not exist or is
// outside scope).
func (o *Orchestrator) Events(ctx context.Context, scope store.Scope, jobID string, afterSeq int64, limit int) ([]store.Event, error) {
	if _, err := o.Job(ctx, scope, jobID); err != nil {
		return nil, err
	}
	return o.EventLog(ctx, jobID, afterSeq, limit)
}

// EventLog returns up to limit (at most 10,000) events of a job known to exist, after afterSeq.
func (o *Orchestrator) EventLog(ctx context.Context, jobID string, afterSeq int64, limit int) ([]store.Event, error) {
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	return o.store.ListEvents(ctx, jobID, afterSeq, limit)
}

// ResumeRequest asks to re-run a failed, cancelled or stuck job.
type ResumeRequest struct {
	FromStep string          // optional: re-run this step and everything downstream of it
	Input    json.RawMessage // optional: replaces the input for re-executed steps
}

// Resume re-runs the job's failed, skipped, cancelled and stuck steps (and, with FromStep, that step
// and its downstream steps) in a new run each; SUCCEEDED steps outside that set are kept. It returns
// the job and its steps as the resume left them (no attempts). A job outside scope is
// ErrJobNotFound.
func (o *Orchestrator) Resume(ctx context.Context, scope store.Scope, id string, req ResumeRequest) (*JobView, error) {
	if _, err := o.Job(ctx, scope, id); err != nil {
		return nil, err
	}
	sn, err := o.withJobFrom(ctx, id, nil, func(u *unit) error {
		if u.feature == nil {
			return fmt.Errorf("%w: %q is no longer registered", ErrFeatureNotFound, u.job.FeatureName)
		}
		switch {
		case u.job.Status == store.JobCompleted:
			return fmt.Errorf("%w: job is COMPLETED", ErrNotResumable)
		case !u.job.Status.Terminal() && u.job.StuckAt == nil:
			return fmt.Errorf("%w: job is %s and not stuck", ErrNotResumable, u.job.Status)
		}
		rerun := map[string]bool{}
		if req.FromStep != "" {
			if _, ok := u.byName[req.FromStep]; !ok {
				names := make([]string, len(u.steps))
				for i, s := range u.steps {
					names[i] = s.Name
				}
				return &UnknownNameError{Kind: ErrStepNotFound, Name: req.FromStep, Valid: names}
			}
			rerun[req.FromStep] = true
			for _, d := range u.feature.Downstream(req.FromStep) {
				rerun[d] = true
			}
		}
		if len(bytes.TrimSpace(req.Input)) > 0 {
			input, err := u.o.checkInput(u.feature, req.Input)
			if err != nil {
				return err
			}
			u.job.Input = input
			u.job.InputVersion++
			u.inputs = append(u.inputs, store.JobInput{JobID: id, Version: u.job.InputVersion, Input: input, CreatedAt: u.now})
		}
		for _, s := range u.steps {
			if s.Status == store.StepSucceeded && !rerun[s.Name] {
				continue
			}
			s.Run++
			s.Attempts, s.Lost = 0, 0
			s.Output, s.Error, s.ErrorClass = nil, "", ""
			s.StartedAt, s.FinishedAt, s.NextAttemptAt = nil, nil, nil
			s.LeaseOwner, s.LeaseExpiresAt = "", nil
			u.setStep(s, store.StepPending, "", "resumed")
			s.FinishedAt = nil
		}
		u.job.Output = nil
		u.job.StuckAt, u.job.StuckReason = nil, ""
		u.setJob(store.JobPending, "", "resumed")
		u.advance()
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The job as the resume left it, as CreateJob answers: a worker may have started a step since
	// (the bell starts one within milliseconds), and the answer reports what the resume did.
	if sn == nil {
		return o.GetJob(ctx, scope, id)
	}
	return &JobView{Job: sn.job, Steps: sn.steps}, nil
}

// Cancel ends a job: waiting and running steps become CANCELLED (running calls are cancelled by their
// workers when they see the job's CANCELLED event or lose their lease) and the job ends CANCELLED.
// A job outside scope is ErrJobNotFound.
func (o *Orchestrator) Cancel(ctx context.Context, scope store.Scope, id string) (*JobView, error) {
	if _, err := o.Job(ctx, scope, id); err != nil {
		return nil, err
	}
	err := o.withJob(ctx, id, func(u *unit) error {
		if u.job.Status.Terminal() {
			return fmt.Errorf("%w: job is %s", ErrAlreadyTerminal, u.job.Status)
		}
		for _, s := range u.steps {
			if !s.Status.Terminal() {
				u.setStep(s, store.StepCancelled, "", "job cancelled")
			}
		}
		u.setJob(store.JobCancelled, "", "cancelled by request")
		return nil
	})
	if err != nil {
		return nil, err
	}
	return o.GetJob(ctx, scope, id)
}

// nowPtr returns a pointer to t.
func nowPtr(t time.Time) *time.Time { return &t }

// DeleteExpiredJobs deletes terminal jobs that finished more than retention ago (CAO_RETENTION) with
// all their rows, batch jobs per statement and at most maxBatches statements per call, so no call
// holds locks or a connection for long; it returns how many jobs it deleted.
func (o *Orchestrator) DeleteExpiredJobs(ctx context.Context, retention time.Duration, batch, maxBatches int) (int64, error) {
	if retention <= 0 {
		return 0, nil
	}
	cutoff := o.now().Add(-retention)
	var total int64
	for range maxBatches {
		n, err := o.store.DeleteFinishedJobs(ctx, cutoff, batch)
		total += n
		if err != nil || n < int64(batch) {
			return total, err
		}
	}
	return total, nil
}

// ExpireIdempotencyKeys deletes Idempotency-Keys past their retention and returns how many.
func (o *Orchestrator) ExpireIdempotencyKeys(ctx context.Context) (int64, error) {
	var n int64
	err := o.store.Tx(ctx, func(tx store.Tx) error {
		var err error
		n, err = tx.DeleteExpiredIdempotencyKeys(ctx, o.now())
		return err
	})
	return n, err
}

// LastSeqs returns the seq of the newest event of each of the jobs that exist among ids.
func (o *Orchestrator) LastSeqs(ctx context.Context, ids []string) (map[string]int64, error) {
	return o.store.LastSeqs(ctx, ids)
}

package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cao-run/cao/pkg/store"
)

// hotPath is the dialect-specific implementation of the operations every step runs through: load a
// job with its steps, and apply one change. Postgres does each in one statement (postgresHot);
// SQLite, which is in-process and has one writer anyway, runs the generic statements in one
// transaction (genericHot).
type hotPath interface {
	loadJob(ctx context.Context, id string) (*store.Job, []store.Step, error)
	apply(ctx context.Context, c *store.Change) error
}

// LoadJob returns the job and its steps as they were at one moment; store.ErrNotFound if missing.
func (s *Store) LoadJob(ctx context.Context, id string) (*store.Job, []store.Step, error) {
	return s.hot.loadJob(ctx, id)
}

// Apply writes one change of one job atomically (see store.Change): everything, or nothing with
// store.ErrConflict when the job or a step is no longer as the change expects.
func (s *Store) Apply(ctx context.Context, c *store.Change) error {
	if c.Job == nil {
		return fmt.Errorf("apply: %w: change without a job", store.ErrNotFound)
	}
	if err := normalizeChange(c); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	return s.hot.apply(ctx, c)
}

// ExtendLease moves the heartbeat lease of a RUNNING step still in the given run and attempt and
// leased by owner; store.ErrConflict when it is not.
func (s *Store) ExtendLease(ctx context.Context, jobID, step string, run, attempt int, owner string, until time.Time) error {
	key, ok := canonicalID(jobID)
	if !ok {
		return fmt.Errorf("extend lease: %w", store.ErrConflict)
	}
	res := s.conn(ctx).Exec(`UPDATE job_steps SET lease_expires_at = ?
		WHERE job_id = ? AND name = ? AND status = ? AND run = ? AND attempts = ? AND lease_owner = ?`,
		dbTime(until), key, step, string(store.StepRunning), run, attempt, owner)
	if res.Error != nil {
		return fmt.Errorf("extend lease of %s/%s: %w", key, step, interpretError(res.Error))
	}
	if res.RowsAffected != 1 {
		return fmt.Errorf("extend lease of %s/%s: %w", key, step, store.ErrConflict)
	}
	return nil
}

// normalizeChange canonicalizes every row of c in place (ids, times, defaults), as the single-row
// writers do, and sets the job's new version.
func normalizeChange(c *store.Change) error {
	if err := normalizeJob(c.Job, c.Create); err != nil {
		return err
	}
	if c.Create {
		c.Job.Version = 1
	} else {
		c.Job.Version = c.Version + 1
	}
	// Error texts come from services; a NUL in them is not stored as it is.
	c.Job.Error = store.CleanText(c.Job.Error)
	for i := range c.Steps {
		s := &c.Steps[i].Step
		s.JobID = c.Job.ID
		if err := normalizeStep(s, c.Create); err != nil {
			return err
		}
		s.Error = store.CleanText(s.Error)
	}
	for i := range c.Attempts {
		a := &c.Attempts[i]
		a.JobID = c.Job.ID
		a.StartedAt = orNow(a.StartedAt)
		a.FinishedAt = dbTimePtr(a.FinishedAt)
		a.Error = store.CleanText(a.Error)
	}
	for i := range c.Inputs {
		c.Inputs[i].JobID = c.Job.ID
		c.Inputs[i].CreatedAt = orNow(c.Inputs[i].CreatedAt)
	}
	for i := range c.Events {
		c.Events[i].JobID = c.Job.ID
		c.Events[i].At = orNow(c.Events[i].At)
		c.Events[i].Error = store.CleanText(c.Events[i].Error)
		c.Events[i].Reason = store.CleanText(c.Events[i].Reason)
	}
	for i := range c.Outbox {
		c.Outbox[i].CreatedAt = orNow(c.Outbox[i].CreatedAt)
		c.Outbox[i].ProcessAt = dbTimePtr(c.Outbox[i].ProcessAt)
	}
	if c.Create && len(c.Webhooks) > 0 {
		return errors.New("a change that creates a job cannot deliver webhooks")
	}
	for i := range c.Webhooks {
		if err := normalizeWebhook(&c.Webhooks[i], c.Job.ID); err != nil {
			return err
		}
	}
	return nil
}

// genericHot runs the hot path as separate statements in one transaction of the store.
type genericHot struct{ s *Store }

func (g genericHot) loadJob(ctx context.Context, id string) (*store.Job, []store.Step, error) {
	// Two reads. The steps are read after the job, so they are as new as the job or newer; a change
	// computed from a job whose steps moved on is refused by Apply's version check.
	job, err := g.s.GetJob(ctx, store.AllTenants, id)
	if err != nil {
		return nil, nil, err
	}
	steps, err := g.s.GetSteps(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return job, steps, nil
}

func (g genericHot) apply(ctx context.Context, c *store.Change) error {
	return g.s.Tx(ctx, func(tx store.Tx) error { return tx.(*txn).apply(ctx, c) })
}

// apply writes c with one statement per row, inside the caller's transaction.
func (t *txn) apply(ctx context.Context, c *store.Change) error {
	j := c.Job
	if c.Create {
		row := jobToRow(j)
		if err := t.conn(ctx).Create(&row).Error; err != nil {
			return fmt.Errorf("insert job %s: %w", j.ID, interpretError(err))
		}
		steps := make([]store.Step, len(c.Steps))
		for i := range c.Steps {
			steps[i] = c.Steps[i].Step
		}
		if err := t.InsertSteps(ctx, steps); err != nil {
			return err
		}
		if c.IdempotencyKey != "" {
			res := t.conn(ctx).Exec(`UPDATE idempotency_keys SET job_id = ? WHERE tenant = ? AND "key" = ? AND job_id IS NULL`,
				j.ID, j.Tenant, c.IdempotencyKey)
			if res.Error != nil {
				return fmt.Errorf("bind idempotency key: %w", interpretError(res.Error))
			}
			if res.RowsAffected != 1 {
				return fmt.Errorf("bind idempotency key: %w", store.ErrConflict)
			}
		}
	} else {
		row := jobToRow(j)
		res := t.conn(ctx).Exec(`UPDATE jobs SET status = ?, input = ?, input_version = ?, output = ?, error = ?,
			last_seq = ?, stuck_at = ?, stuck_reason = ?, updated_at = ?, started_at = ?, finished_at = ?, version = ?
			WHERE id = ? AND version = ?`,
			row.Status, row.Input, row.InputVersion, row.Output, row.Error, row.LastSeq, row.StuckAt, row.StuckReason,
			row.UpdatedAt, row.StartedAt, row.FinishedAt, j.Version, j.ID, c.Version)
		if res.Error != nil {
			return fmt.Errorf("update job %s: %w", j.ID, interpretError(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("update job %s at version %d: %w", j.ID, c.Version, store.ErrConflict)
		}
		for i := range c.Steps {
			if err := t.UpdateStep(ctx, &c.Steps[i].Step, c.Steps[i].Expect); err != nil {
				return err
			}
		}
	}
	for i := range c.Attempts {
		if err := t.UpsertAttempt(ctx, &c.Attempts[i]); err != nil {
			return err
		}
	}
	for i := range c.Inputs {
		if err := t.InsertJobInput(ctx, &c.Inputs[i]); err != nil {
			return err
		}
	}
	if err := t.AppendEvents(ctx, c.Events); err != nil {
		return err
	}
	if err := t.insertWebhooks(ctx, c.Webhooks); err != nil {
		return err
	}
	return t.InsertOutbox(ctx, c.Outbox)
}

// Package orchestrator is CAO's core: it creates jobs, moves jobs and steps through their states with
// compare-and-set transactions, decides what runs next in each feature's DAG, and records every change
// as an event and every task it implies in the outbox, in the same transaction.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/schema"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/webhook"
)

// Domain errors; the API maps them to HTTP statuses in one place.
var (
	// ErrFeatureNotFound means the feature is not in the registry.
	ErrFeatureNotFound = errors.New("feature not found")
	// ErrJobNotFound means no job has that id.
	ErrJobNotFound = errors.New("job not found")
	// ErrNotResumable means the job is completed, or running and not stuck.
	ErrNotResumable = errors.New("job not resumable")
	// ErrAlreadyTerminal means the job already ended.
	ErrAlreadyTerminal = errors.New("job already terminal")
	// ErrStepNotFound means a step name given by the client is not part of the job's feature.
	ErrStepNotFound = errors.New("step not found")
	// ErrIdempotencyInFlight means a request with the same Idempotency-Key is still being processed.
	ErrIdempotencyInFlight = errors.New("idempotency key in flight")
	// ErrIdempotencyMismatch means the Idempotency-Key was used before with another request body.
	ErrIdempotencyMismatch = errors.New("idempotency key reused with a different request")
	// ErrStale means a task no longer matches the step's state (duplicate or late delivery): acknowledge it.
	ErrStale = errors.New("stale task")
	// ErrFenced means an attempt's result or heartbeat was rejected because the attempt no longer owns
	// the step (it was reclaimed, cancelled or already finished).
	ErrFenced = errors.New("attempt fenced")
)

// UnknownNameError is ErrFeatureNotFound or ErrStepNotFound with the names that would have been valid.
type UnknownNameError struct {
	Kind  error // ErrFeatureNotFound or ErrStepNotFound
	Name  string
	Valid []string
}

func (e *UnknownNameError) Error() string { return fmt.Sprintf("%v: %q", e.Kind, e.Name) }

// Unwrap returns Kind.
func (e *UnknownNameError) Unwrap() error { return e.Kind }

// InputError lists what is wrong with a job's input_data.
type InputError struct {
	Fields []schema.FieldError
}

func (e *InputError) Error() string {
	if len(e.Fields) == 0 {
		return "invalid input"
	}
	f := e.Fields[0]
	return fmt.Sprintf("invalid input: %s %s", f.Field, f.Message)
}

// Defaults of Config.
const (
	DefaultStepLeaseTTL            = 10 * time.Second
	DefaultMaxLostAttempts         = 5
	DefaultStuckJobAfter           = 5 * time.Minute
	DefaultFailStuckAfter          = 15 * time.Minute
	DefaultIdempotencyTTL          = 24 * time.Hour
	DefaultIdempotencyAbandonAfter = time.Minute
)

// Config holds the orchestrator's tunables; zero values take the documented defaults.
type Config struct {
	// StepLeaseTTL is how long a RUNNING step's heartbeat lease lasts; a worker renews it about every
	// third of it, and a step whose lease expired is re-run. Default 10s.
	StepLeaseTTL time.Duration
	// MaxLostAttempts is how many attempts of one run may be lost to dead workers before the step fails
	// (protects against a step that crashes every worker). Default 5.
	MaxLostAttempts int
	// StuckJobAfter is how long a job may go without progress (no step running on a live lease and no
	// state change) before it is reported stuck and recovered. Default 5m.
	StuckJobAfter time.Duration
	// FailStuckAfter is how long a job may stay stuck after recovery before it is failed. Default 15m.
	FailStuckAfter time.Duration
	// IdempotencyTTL is how long POST /jobs Idempotency-Keys are remembered. Default 24h.
	IdempotencyTTL time.Duration
	// IdempotencyAbandonAfter is when a key whose first request never finished may be taken over. Default 1m.
	IdempotencyAbandonAfter time.Duration
	// Webhooks says which webhook_url a job may name (CAO_WEBHOOK_ALLOWED_HOSTS); the zero Policy
	// refuses every one.
	Webhooks webhook.Policy
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
	// Rand returns a float in [0,1) for backoff jitter. Default math/rand/v2.
	Rand func() float64
	// Logger receives operational logs, and one line per committed event (see logEvent). Default
	// slog.Default().
	Logger *slog.Logger
	// Hooks observe committed changes (metrics). Optional.
	Hooks Hooks
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.StepLeaseTTL <= 0 {
		c.StepLeaseTTL = DefaultStepLeaseTTL
	}
	if c.MaxLostAttempts <= 0 {
		c.MaxLostAttempts = DefaultMaxLostAttempts
	}
	if c.StuckJobAfter <= 0 {
		c.StuckJobAfter = DefaultStuckJobAfter
	}
	if c.FailStuckAfter <= 0 {
		c.FailStuckAfter = DefaultFailStuckAfter
	}
	if c.IdempotencyTTL <= 0 {
		c.IdempotencyTTL = DefaultIdempotencyTTL
	}
	if c.IdempotencyAbandonAfter <= 0 {
		c.IdempotencyAbandonAfter = DefaultIdempotencyAbandonAfter
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Dispatcher hands the tasks of a committed change to the queue. The tasks are in the outbox too:
// a task it could not enqueue is left there for the relay.
type Dispatcher interface {
	Dispatch(ctx context.Context, tasks []store.OutboxTask)
}

// Orchestrator owns every state transition of jobs and steps.
type Orchestrator struct {
	store    store.Store
	reg      *registry.Registry
	pub      events.Publisher
	dispatch Dispatcher
	cfg      Config
}

// New returns an orchestrator. pub may be nil (events are then only in the database); dispatch may
// be nil (committed tasks then wait for the outbox relay).
func New(st store.Store, reg *registry.Registry, pub events.Publisher, dispatch Dispatcher, cfg Config) *Orchestrator {
	return &Orchestrator{store: st, reg: reg, pub: pub, dispatch: dispatch, cfg: cfg.WithDefaults()}
}

// Config returns the effective configuration.
func (o *Orchestrator) Config() Config { return o.cfg }

func (o *Orchestrator) now() time.Time { return o.cfg.Now().UTC().Truncate(time.Microsecond) }

// publish hands committed events to the publisher, without waiting for them to be sent: a lost
// message is recovered by readers from the event log.
func (o *Orchestrator) publish(evs []store.Event) {
	if o.pub != nil && len(evs) > 0 {
		o.pub.Post(evs)
	}
}

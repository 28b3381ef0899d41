package httpapi

import (
	"context"
	"log/slog"
	"time"

	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/health"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/view"
)

// Jobs is what the API asks of the core about jobs (the orchestrator implements it). Every read and
// change of a job, REST and WebSocket alike, goes through it, in the scope of the caller's key: a job
// outside it is not found.
type Jobs interface {
	CreateJob(ctx context.Context, req orchestrator.CreateRequest) (*orchestrator.JobView, bool, error)
	GetJob(ctx context.Context, scope store.Scope, id string) (*orchestrator.JobView, error)
	Job(ctx context.Context, scope store.Scope, id string) (*store.Job, error)
	ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, *store.Cursor, error)
	Events(ctx context.Context, scope store.Scope, id string, afterSeq int64, limit int) ([]store.Event, error)
	// EventLog and LastSeqs serve WebSockets already admitted to their job.
	EventLog(ctx context.Context, id string, afterSeq int64, limit int) ([]store.Event, error)
	LastSeqs(ctx context.Context, ids []string) (map[string]int64, error)
	Resume(ctx context.Context, scope store.Scope, id string, req orchestrator.ResumeRequest) (*orchestrator.JobView, error)
	Cancel(ctx context.Context, scope store.Scope, id string) (*orchestrator.JobView, error)
}

// Tokens issues and checks WebSocket tickets and /monitoring/ sessions (auth.Tokens implements it).
type Tokens interface {
	IssueTicket(ctx context.Context, key string, caller auth.Caller, jobID string) (string, time.Time, error)
	RedeemTicket(ctx context.Context, ticket string) (auth.Grant, error)
	IssueSession(ctx context.Context, key string, caller auth.Caller) (string, time.Time, error)
	Session(ctx context.Context, session string) (auth.Grant, error)
}

// RateLimiter keeps the fleet-wide request budgets (limiter.RateLimiter implements it).
type RateLimiter interface {
	Reserve(ctx context.Context, name string, requests int, per time.Duration) (limiter.Reservation, bool, time.Duration, error)
}

// Events is the live fan-out of job events in this process (events.Hub implements it).
type Events interface {
	Subscribe(jobID string, buf int) *events.Subscription
}

// Health checks the backends and services (health.Checker implements it).
type Health interface {
	// Run is the full report (for callers with a key); Status only its overall status, cheaply.
	Run(ctx context.Context) health.Report
	Status(ctx context.Context) string
	Unavailable(ctx context.Context) bool
	// StepWaits explains why job jobID's steps wait for their services (nil: none known to wait).
	StepWaits(ctx context.Context, jobID string) map[string]view.Waiting
}

// Settings are the API's configuration (from the CAO_* environment).
type Settings struct {
	// RateLimit is each tenant's budget on /api/v1 (CAO_RATE_LIMIT): Requests per Per; zero: none.
	RateLimit registry.RateLimit
	// WSMaxPerTenant caps one tenant's open WebSockets on this process (CAO_WS_MAX_PER_TENANT; 0: none).
	WSMaxPerTenant int
	Keys           *auth.Keyring // CAO_API_KEYS and CAO_ADMIN_KEYS; empty: no authentication
	AllowedOrigins []string      // CAO_ALLOWED_ORIGINS
	PublicURL      string        // CAO_PUBLIC_URL; empty: from the request's Host
	MaxBodyBytes   int64         // CAO_MAX_BODY_BYTES
}

// Deps are the API's dependencies, each as narrow as the handlers need.
type Deps struct {
	Jobs     Jobs
	Events   Events
	Health   Health
	Metrics  *metrics.Metrics
	Registry *registry.Registry // the features listed by GET /features
	Tokens   Tokens
	Limiter  RateLimiter // nil: no rate limit
	Settings Settings
	Logger   *slog.Logger
}

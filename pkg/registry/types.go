// Package registry loads and validates the services and features file (CAO_REGISTRY): which external
// APIs exist, their limits and secrets, and which DAG of steps each feature runs.
package registry

import (
	"time"

	"github.com/cao-run/cao/pkg/render"
	"github.com/cao-run/cao/pkg/schema"
)

// Service kinds.
const (
	KindHTTP = "http"
	KindMock = "mock"
)

// Defaults applied by the loader where the file is silent.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultLeaseTTL         = 30 * time.Second
	DefaultMaxAttempts      = 3
	DefaultInitialBackoff   = time.Second
	DefaultMaxBackoff       = time.Minute
	DefaultQueue            = "default"
	DefaultMaxResponseBytes = 1 << 20
)

// Registry is a loaded, validated registry file.
type Registry struct {
	Path     string              // the file it was loaded from
	Services map[string]*Service // by name
	Features map[string]*Feature // by name
}

// Service is one external API (or built-in mock) with its fleet-wide limits.
type Service struct {
	Name             string
	Kind             string            // KindHTTP or KindMock
	BaseURL          string            // absolute http(s) URL without a trailing slash; request paths are appended
	Headers          map[string]string // may hold secrets: never log or return them
	Timeout          time.Duration
	MaxConcurrency   int // fleet-wide concurrent calls; 0 = unlimited
	LeaseTTL         time.Duration
	Retry            RetryPolicy
	Health           *HealthProbe // nil: no probe
	Mock             MockSpec     // for KindMock
	MaxResponseBytes int64        // responses larger than this fail the step
	// Adaptive, when set, makes the fleet-wide limit adapt between Adaptive.Min and MaxConcurrency
	// (AIMD); nil: the limit is MaxConcurrency.
	Adaptive *Adaptive
	// BudgetHeaders makes every worker follow the rate-limit budget the service reports on its
	// answers (x-ratelimit-*, IETF RateLimit): when a budget is spent, calls wait until it resets.
	// Default true for http services; always false for mock services.
	BudgetHeaders bool
	// MaxConcurrencyPerTenant caps the calls of one tenant's steps in flight, fleet-wide, within
	// MaxConcurrency; 0: no cap of its own (tenants still share a saturated service round-robin).
	MaxConcurrencyPerTenant int
	// RateLimits are the service's fleet-wide budgets (registry keys rate_limit and rate_limits, in
	// that order): a call leaves only when every one has room. Empty: none.
	RateLimits []Budget
	// KeyLimit caps the calls in flight per value of a template (concurrency_key with
	// max_concurrency_per_key); nil: none. A step may override it (Step.KeyLimit is the effective one).
	KeyLimit *KeyLimit
	// Secrets are the literal values that must be redacted from anything CAO logs, stores or returns:
	// every header value and every ${VAR} expansion inside the service definition, and those of its
	// steps' request headers, query and path. Redact hides them in every encoded form too (URL, JSON,
	// HTML, base64: see SecretForms), with a replacer built once at load.
	Secrets []string
}

// RateLimit is a request budget, Requests per Per: the form of a service's rate_limit key (the
// service keeps it as one of its RateLimits) and of CAO_RATE_LIMIT.
type RateLimit struct {
	Requests int
	Per      time.Duration
}

// Adaptive configures the adaptive concurrency of a service (registry key adaptive:).
type Adaptive struct {
	Min int // the effective limit is never halved below this; 1 <= Min <= MaxConcurrency
}

// RetryPolicy bounds the attempts of one run of a step; delays grow exponentially with full jitter.
type RetryPolicy struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

// HealthProbe is an optional request used by /health/services.
type HealthProbe struct {
	Method string
	Path   string
}

// MockSpec configures the built-in mock service kind (no network).
type MockSpec struct {
	Latency     time.Duration
	FailTimes   int     // the first FailTimes attempts of each step run fail with a retryable error
	FailureRate float64 // probability in [0,1] that an attempt fails with a retryable error
	Output      any     // optional template value returned as the output; default echoes the request
	// OutputTemplate is Output compiled at load time; nil when Output is nil.
	OutputTemplate *render.Template
}

// Feature is a named DAG of steps.
type Feature struct {
	Name        string
	Description string
	Input       *schema.Schema // nil: any JSON object
	Steps       []*Step        // in file order
}

// Step is one node of a feature's DAG, with its service settings merged with its own overrides.
type Step struct {
	Name    string
	Service string
	Queue   string
	Needs   []string
	// Request is the call to make. The loader fills it for every step of an http service (default: a
	// POST of {} to "/"); it is nil for steps of mock services.
	Request *Request
	// Effective settings: the service's, overridden by the step's own.
	Timeout time.Duration
	Retry   RetryPolicy
	Mock    MockSpec
	// KeyLimit is the step's own concurrency_key / max_concurrency_per_key over its service's; nil
	// when neither sets one.
	KeyLimit *KeyLimit
}

// Request describes the HTTP call of a step; every string value inside Query, Headers and Body (and
// Path) may be a template (see package render), compiled at load time.
type Request struct {
	Method  string
	Path    string
	Query   map[string]string
	Headers map[string]string
	Body    any // JSON-compatible value: map[string]any, []any, string, float64/int, bool, nil

	// Compiled at load time from the fields above; render them with a render.Data map.
	PathTemplate    *render.Template            // renders to a string
	QueryTemplates  map[string]*render.Template // by query parameter name; each renders to a string
	HeaderTemplates map[string]*render.Template // by header name; each renders to a string
	BodyTemplate    *render.Template            // renders to the JSON body value; nil: send no body
}

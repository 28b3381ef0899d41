// Package caller performs one attempt of one step: it renders the step's request from the registry's
// compiled templates, calls the service (an HTTP API or the built-in mock) within the step timeout,
// and turns the outcome into a JSON output or a typed, redacted *Error that says whether to retry.
package caller

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
	"github.com/cao-run/cao/pkg/store"
)

// UserAgent is sent with every HTTP call.
const UserAgent = "cao/1"

// maxRedirects bounds same-host redirects followed by the default client.
const maxRedirects = 10

// errStepTimeout is the cause of the per-call context when the step timeout elapses; it tells a
// timeout apart from the parent context ending.
var errStepTimeout = errors.New("step timeout elapsed")

// Call is one attempt of one step of one job.
type Call struct {
	JobID   string
	Step    *registry.Step    // with effective settings (timeout, mock knobs) already merged
	Service *registry.Service // the service Step.Service names
	Run     int               // 1-based run of the step; a resume starts a new run
	Attempt int               // 1-based attempt within the run
	// IdempotencyKey is "<job_id>/<step>/<run>", sent as the Idempotency-Key header on every HTTP call.
	IdempotencyKey string
	// Data is the template data: input, outputs of finished steps, job id, step name, attempt, run.
	Data render.Data
}

// Result is the outcome of a successful call.
type Result struct {
	Output     json.RawMessage // JSON; a non-JSON body is stored as a JSON string, an empty one as null
	HTTPStatus int             // 0 for mock services
	Duration   time.Duration   // wall time of the attempt, latency of a mock included
	// Budget is what the answer said about the service's rate-limit budgets; nil when it said
	// nothing or the service does not follow budget headers (registry key budget_headers).
	Budget *Budget
}

// Config holds the optional settings of a Caller; zero values take the documented defaults.
type Config struct {
	// HTTPClient sends the requests. Default: a tuned transport that follows redirects only within the
	// same scheme and host (others come back as a non-retryable http_status error).
	HTTPClient *http.Client
	// MaxResponseBytes, when > 0, overrides every service's limit. Default: the service's
	// MaxResponseBytes, else registry.DefaultMaxResponseBytes (1 MiB).
	MaxResponseBytes int64
	// Now is the clock used for Retry-After dates and durations. Default: time.Now.
	Now func() time.Time
	// Rand returns numbers in [0, 1) for mock failure rates; it must be safe for concurrent use.
	// Default: math/rand/v2.Float64.
	Rand func() float64
}

// WithDefaults returns a copy of the config with every unset field filled in.
func (c Config) WithDefaults() Config {
	if c.HTTPClient == nil {
		c.HTTPClient = DefaultHTTPClient()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c
}

// Caller executes step attempts; it is safe for concurrent use.
type Caller struct {
	cfg Config
}

// New returns a Caller with cfg's defaults applied.
func New(cfg Config) *Caller {
	return &Caller{cfg: cfg.WithDefaults()}
}

// DefaultHTTPClient returns the client New uses when Config.HTTPClient is nil: pooled keep-alive
// connections, HTTP/2 when offered, proxy from the environment, and redirects followed only within
// the original scheme and host so that credentials never travel to another server.
func DefaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 64
	t.IdleConnTimeout = 90 * time.Second
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ExpectContinueTimeout = time.Second
	t.ForceAttemptHTTP2 = true
	return &http.Client{
		Transport: t,
		// No Client.Timeout: every call carries the step timeout in its context.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			first := via[0].URL
			if len(via) >= maxRedirects || req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

// Call performs one attempt of call.Step against call.Service. On failure the error is always an
// *Error (use errors.As) and the Result still carries HTTPStatus and Duration when known.
func (c *Caller) Call(ctx context.Context, call Call) (Result, error) {
	start := c.cfg.Now()
	res, err := c.call(ctx, call)
	res.Duration = c.cfg.Now().Sub(start)
	if err == nil {
		if u := store.CheckJSON(res.Output); u != nil {
			// An answer no backend can hold is the service's fault: the step fails now, rather than
			// losing its outcome and re-running as if its worker had died.
			err = newError(call.Service, ClassInvalidResponse, false, res.HTTPStatus, "the answer cannot be stored: %s", u)
			res.Output = nil
		}
	}
	if err != nil {
		if err.HTTPStatus == 0 {
			err.HTTPStatus = res.HTTPStatus
		}
		return res, err
	}
	return res, nil
}

func (c *Caller) call(ctx context.Context, call Call) (Result, *Error) {
	svc := call.Service
	if call.Step == nil || svc == nil {
		return Result{}, newError(svc, ClassTemplate, false, 0, "invalid call: step and service are required")
	}
	if err := ctx.Err(); err != nil {
		return Result{}, cancelled(ctx, svc)
	}
	switch svc.Kind {
	case registry.KindHTTP:
		return c.callHTTP(ctx, call)
	case registry.KindMock:
		return c.callMock(ctx, call)
	}
	return Result{}, newError(svc, ClassTemplate, false, 0, "service %q has unknown kind %q", svc.Name, svc.Kind)
}

// Probe checks that an HTTP service answers its health request (svc.Health) with a 2xx status; it
// returns nil for mock services and services without a probe, and an *Error otherwise.
func (c *Caller) Probe(ctx context.Context, svc *registry.Service) error {
	if svc == nil || svc.Kind == registry.KindMock || svc.Health == nil {
		return nil
	}
	if err := c.probe(ctx, svc); err != nil {
		return err
	}
	return nil
}

// timeoutOf returns the effective timeout of a step.
func timeoutOf(step *registry.Step, svc *registry.Service) time.Duration {
	switch {
	case step != nil && step.Timeout > 0:
		return step.Timeout
	case svc != nil && svc.Timeout > 0:
		return svc.Timeout
	}
	return registry.DefaultTimeout
}

// withStepTimeout derives the per-call context.
func withStepTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d, errStepTimeout)
}

// contextError classifies the end of a call's context: the parent ending is "cancelled" (whoever
// cancelled decides what happens next), the step timeout is "timeout". nil when neither has ended.
func contextError(parent, callCtx context.Context, svc *registry.Service, timeout time.Duration) *Error {
	if parent.Err() != nil {
		return cancelled(parent, svc)
	}
	if callCtx.Err() != nil {
		return newError(svc, ClassTimeout, true, 0, "service %q did not answer within the step timeout of %s", svc.Name, timeout)
	}
	return nil
}

// cancelled reports the parent context ending, with its cause.
func cancelled(ctx context.Context, svc *registry.Service) *Error {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.Canceled
	}
	name := ""
	if svc != nil {
		name = svc.Name
	}
	return newError(svc, ClassCancelled, false, 0, "call to service %q cancelled: %v", name, cause)
}

// Package config reads CAO's process settings from the environment (the CAO_* variables of the
// public contract) and checks them at start: a bad value names its variable.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/redisconn"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/webhook"
)

// Config is the validated environment of an api or worker process.
type Config struct {
	DatabaseURL       string         // CAO_DATABASE_URL
	RedisURL          string         // CAO_REDIS_URL
	RegistryPath      string         // CAO_REGISTRY
	HTTPAddr          string         // CAO_HTTP_ADDR
	PublicURL         string         // CAO_PUBLIC_URL; empty: from the request's Host
	APIKeys           []auth.Key     // CAO_API_KEYS: `key` or `tenant:key` entries
	AdminKeys         []auth.Key     // CAO_ADMIN_KEYS: same syntax; these keys see every tenant
	AuthOff           bool           // CAO_AUTH=off
	AllowedOrigins    []string       // CAO_ALLOWED_ORIGINS
	WorkerQueues      map[string]int // CAO_WORKER_QUEUES
	WorkerConcurrency int            // CAO_WORKER_CONCURRENCY
	// WorkerIdlePoll is CAO_WORKER_IDLE_POLL: how often an idle worker looks at its empty queues; zero
	// means the runner's default (runner.DefaultIdlePoll).
	WorkerIdlePoll time.Duration
	AutoMigrate    bool       // CAO_AUTO_MIGRATE
	LogLevel       slog.Level // CAO_LOG_LEVEL
	LogFormat      string     // CAO_LOG_FORMAT: json | text

	StepLeaseTTL   time.Duration // CAO_STEP_LEASE_TTL: heartbeat lease of a running step (default 10s)
	StuckJobAfter  time.Duration // CAO_STUCK_JOB_AFTER: no progress before a job is reported stuck (5m)
	FailStuckAfter time.Duration // CAO_FAIL_STUCK_AFTER: stuck time before a job is failed (15m)
	ShutdownGrace  time.Duration // CAO_SHUTDOWN_GRACE: running steps may finish this long on SIGTERM (30s)
	MaxBodyBytes   int64         // CAO_MAX_BODY_BYTES: largest accepted request body (1 MiB)
	IdempotencyTTL time.Duration // CAO_IDEMPOTENCY_TTL: how long Idempotency-Keys are kept (24h)
	DataDir        string        // CAO_DATA_DIR: where dev mode keeps its SQLite database (.cao)
	MetricsAddr    string        // CAO_METRICS_ADDR: a worker's /metrics and /health listener (none)
	DBMaxConns     int           // CAO_DATABASE_MAX_CONNS: connections per process to Postgres (10)

	// RateLimit is CAO_RATE_LIMIT: each tenant's request budget on /api/v1, fleet-wide (zero: none).
	RateLimit registry.RateLimit
	// HTTPReadTimeout is CAO_HTTP_READ_TIMEOUT: a request's headers and body must arrive within it.
	HTTPReadTimeout time.Duration
	// Retention is CAO_RETENTION: terminal jobs older than this are deleted with all their rows; 0
	// keeps everything.
	Retention time.Duration
	// WebhookSecret is CAO_WEBHOOK_SECRET, "whsec_<base64>": the key completion webhooks are signed with.
	WebhookSecret string
	// WebhookHosts is CAO_WEBHOOK_ALLOWED_HOSTS: where a webhook_url may point (empty: refused).
	WebhookHosts webhook.Policy
	// WSMaxPerTenant is CAO_WS_MAX_PER_TENANT: open WebSocket connections one tenant may hold on one
	// API process (0: no cap).
	WSMaxPerTenant int
	// TenantWeights is CAO_TENANT_WEIGHTS ("acme=3,globex=1"): each tenant's share of a saturated
	// service relative to the others; a tenant not listed weighs 1.
	TenantWeights map[string]int
}

// Defaults of the HTTP hardening variables.
const (
	DefaultHTTPReadTimeout = 30 * time.Second
	DefaultWSMaxPerTenant  = 1000
	DefaultRetention       = 720 * time.Hour
)

// Defaults for every variable.
const (
	DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	DefaultRedisURL    = "redis://127.0.0.1:6379/0"
	DefaultRegistry    = "deploy/registry.yaml"
	DefaultHTTPAddr    = ":8000"
)

// FromEnv reads the configuration from the process environment.
func FromEnv() (Config, error) { return Parse(os.LookupEnv) }

// Parse reads the configuration through lookup; the error lists every bad variable.
func Parse(lookup func(string) (string, bool)) (Config, error) {
	p := parser{lookup: lookup}
	c := Config{
		DatabaseURL:       p.str("CAO_DATABASE_URL", DefaultDatabaseURL),
		RedisURL:          p.str("CAO_REDIS_URL", DefaultRedisURL),
		RegistryPath:      p.str("CAO_REGISTRY", DefaultRegistry),
		HTTPAddr:          p.str("CAO_HTTP_ADDR", DefaultHTTPAddr),
		PublicURL:         strings.TrimRight(p.str("CAO_PUBLIC_URL", ""), "/"),
		APIKeys:           p.keys("CAO_API_KEYS", false),
		AdminKeys:         p.keys("CAO_ADMIN_KEYS", true),
		AllowedOrigins:    p.list("CAO_ALLOWED_ORIGINS"),
		WorkerConcurrency: p.integer("CAO_WORKER_CONCURRENCY", runner.DefaultConcurrency, 1, 10000),
		AutoMigrate:       p.boolean("CAO_AUTO_MIGRATE", true),
		LogFormat:         p.oneOf("CAO_LOG_FORMAT", "json", "json", "text"),
		StepLeaseTTL:      p.duration("CAO_STEP_LEASE_TTL", orchestrator.DefaultStepLeaseTTL, time.Second),
		StuckJobAfter:     p.duration("CAO_STUCK_JOB_AFTER", orchestrator.DefaultStuckJobAfter, time.Second),
		FailStuckAfter:    p.duration("CAO_FAIL_STUCK_AFTER", orchestrator.DefaultFailStuckAfter, time.Second),
		ShutdownGrace:     p.duration("CAO_SHUTDOWN_GRACE", runner.DefaultShutdownGrace, 0),
		WorkerIdlePoll:    p.duration("CAO_WORKER_IDLE_POLL", 0, time.Millisecond),
		MaxBodyBytes:      int64(p.integer("CAO_MAX_BODY_BYTES", 1<<20, 1024, 1<<30)),
		IdempotencyTTL:    p.duration("CAO_IDEMPOTENCY_TTL", orchestrator.DefaultIdempotencyTTL, time.Minute),
		DataDir:           p.str("CAO_DATA_DIR", ".cao"),
		MetricsAddr:       p.str("CAO_METRICS_ADDR", ""),
		DBMaxConns:        p.integer("CAO_DATABASE_MAX_CONNS", sqlstore.DefaultMaxOpenConns, 1, 1000),
		RateLimit:         p.rateLimit("CAO_RATE_LIMIT"),
		Retention:         p.duration("CAO_RETENTION", DefaultRetention, 0),
		HTTPReadTimeout:   p.duration("CAO_HTTP_READ_TIMEOUT", DefaultHTTPReadTimeout, 100*time.Millisecond),
		WSMaxPerTenant:    p.integer("CAO_WS_MAX_PER_TENANT", DefaultWSMaxPerTenant, 0, 1_000_000),
		TenantWeights:     p.weights("CAO_TENANT_WEIGHTS"),
	}
	c.WebhookSecret = p.str("CAO_WEBHOOK_SECRET", "")
	if c.WebhookSecret != "" {
		if err := webhook.ParseSecret(c.WebhookSecret); err != nil {
			// Never echo the secret.
			p.errs = append(p.errs, fmt.Errorf("CAO_WEBHOOK_SECRET: %w", err))
		}
	}
	hostList := p.str("CAO_WEBHOOK_ALLOWED_HOSTS", "")
	hosts, err := webhook.NewPolicy(hostList)
	if err != nil {
		p.bad("CAO_WEBHOOK_ALLOWED_HOSTS", hostList, "comma-separated host or host:port entries ("+err.Error()+")")
	} else if !hosts.Empty() && c.WebhookSecret == "" {
		p.errs = append(p.errs, errors.New("CAO_WEBHOOK_ALLOWED_HOSTS: webhooks need CAO_WEBHOOK_SECRET to sign them (whsec_ followed by base64 of 32 random bytes)"))
	}
	c.WebhookHosts = hosts
	switch auth := strings.ToLower(p.str("CAO_AUTH", "on")); auth {
	case "off", "false", "0", "no":
		c.AuthOff = true
	case "on", "true", "1", "yes":
	default:
		p.bad("CAO_AUTH", auth, `"on" or "off"`)
	}
	c.LogLevel = p.level("CAO_LOG_LEVEL")
	c.WorkerQueues = p.queues("CAO_WORKER_QUEUES")
	p.url("CAO_DATABASE_URL", c.DatabaseURL, "postgres", "postgresql")
	if _, err := redisconn.Parse(c.RedisURL); err != nil {
		// One server, a Redis Cluster or a Sentinel master; the error never echoes the URL.
		p.errs = append(p.errs, fmt.Errorf("CAO_REDIS_URL: %w", err))
	}
	if c.PublicURL != "" {
		p.url("CAO_PUBLIC_URL", c.PublicURL, "http", "https")
	}
	if c.HTTPAddr != "" && !strings.Contains(c.HTTPAddr, ":") {
		p.bad("CAO_HTTP_ADDR", c.HTTPAddr, "host:port or :port")
	}
	if c.MetricsAddr != "" && !strings.Contains(c.MetricsAddr, ":") {
		p.bad("CAO_METRICS_ADDR", c.MetricsAddr, "host:port or :port")
	}
	for _, o := range c.AllowedOrigins {
		if o != "*" {
			p.url("CAO_ALLOWED_ORIGINS", o, "http", "https")
		}
	}
	if len(p.errs) > 0 {
		return c, errors.Join(p.errs...)
	}
	return c, nil
}

// CheckAuth fails when the API would start open to anyone without saying so.
func (c Config) CheckAuth() error {
	if len(c.APIKeys) == 0 && len(c.AdminKeys) == 0 && !c.AuthOff {
		return errors.New("CAO_API_KEYS: no API keys configured; set CAO_API_KEYS=key1,key2 or CAO_AUTH=off to run without authentication")
	}
	return nil
}

// Keyring is every API and admin key, for the API to match requests against.
func (c Config) Keyring() *auth.Keyring {
	return auth.NewKeyring(append(slices.Clone(c.APIKeys), c.AdminKeys...)...)
}

// Logger builds the process logger from CAO_LOG_LEVEL and CAO_LOG_FORMAT.
func (c Config) Logger() *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

type parser struct {
	lookup func(string) (string, bool)
	errs   []error
}

func (p *parser) bad(name, val, want string) {
	p.errs = append(p.errs, fmt.Errorf("%s: invalid value %q: expected %s", name, val, want))
}

func (p *parser) str(name, def string) string {
	if v, ok := p.lookup(name); ok && strings.TrimSpace(v) != "" {
		return strings.TrimSpace(v)
	}
	return def
}

// keys parses CAO_API_KEYS or CAO_ADMIN_KEYS; the error never quotes a key.
func (p *parser) keys(name string, admin bool) []auth.Key {
	v, _ := p.lookup(name)
	keys, err := auth.ParseKeys(v, admin)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("%s: %w (entries are key or tenant:key, comma-separated)", name, err))
	}
	return keys
}

// rateLimit parses "50/1s" or "600/1m" (a bare unit means one of it: "100/s", "600/m").
func (p *parser) rateLimit(name string) registry.RateLimit {
	v := p.str(name, "")
	if v == "" {
		return registry.RateLimit{}
	}
	n, per, ok := strings.Cut(v, "/")
	count, err := strconv.Atoi(strings.TrimSpace(n))
	per = strings.TrimSpace(per)
	if per != "" && (per[0] < '0' || per[0] > '9') {
		per = "1" + per
	}
	d, derr := time.ParseDuration(per)
	if !ok || err != nil || derr != nil || count < 1 || d < time.Millisecond || d > 24*time.Hour {
		p.bad(name, v, "requests/period such as 50/1s or 600/1m (at least 1 request, period 1ms to 24h)")
		return registry.RateLimit{}
	}
	return registry.RateLimit{Requests: count, Per: d}
}

// weights parses "acme=3,globex=1": tenant names and whole weights from 1 to 1000.
func (p *parser) weights(name string) map[string]int {
	v := p.str(name, "")
	if v == "" {
		return nil
	}
	out := map[string]int{}
	for _, part := range strings.Split(v, ",") {
		tenant, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		tenant = strings.TrimSpace(tenant)
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if _, dup := out[tenant]; !ok || err != nil || n < 1 || n > 1000 || !auth.ValidTenant(tenant) || dup {
			p.bad(name, v, "tenant=weight entries, comma-separated, such as acme=3,globex=1 (tenant names once each, weights 1 to 1000)")
			return nil
		}
		out[tenant] = n
	}
	return out
}

func (p *parser) list(name string) []string {
	var out []string
	for _, part := range strings.Split(p.str(name, ""), ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func (p *parser) integer(name string, def, lo, hi int) int {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.bad(name, v, fmt.Sprintf("an integer from %d to %d", lo, hi))
		return def
	}
	return n
}

func (p *parser) boolean(name string, def bool) bool {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.bad(name, v, "true or false")
		return def
	}
	return b
}

func (p *parser) duration(name string, def, lo time.Duration) time.Duration {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo {
		p.bad(name, v, fmt.Sprintf("a duration such as 30s or 5m, at least %s", lo))
		return def
	}
	return d
}

func (p *parser) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(p.str(name, def))
	if !slices.Contains(allowed, v) {
		p.bad(name, v, "one of "+strings.Join(allowed, ", "))
		return def
	}
	return v
}

func (p *parser) level(name string) slog.Level {
	v := strings.ToLower(p.str(name, "info"))
	switch v {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	p.bad(name, v, "one of debug, info, warn, error")
	return slog.LevelInfo
}

func (p *parser) url(name, v string, schemes ...string) {
	u, err := url.Parse(v)
	if err != nil || !slices.Contains(schemes, u.Scheme) || (u.Host == "" && u.Scheme != "unix") {
		// Never echo a URL that may carry a password.
		p.errs = append(p.errs, fmt.Errorf("%s: invalid URL: expected %s://host[:port][/path]", name, schemes[0]))
	}
}

// queues parses "heavy=6,medium=3,default=1".
func (p *parser) queues(name string) map[string]int {
	v := p.str(name, "")
	if v == "" {
		return runner.DefaultQueues()
	}
	out := map[string]int{}
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		q, w, ok := strings.Cut(part, "=")
		q = strings.TrimSpace(q)
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if !ok || q == "" || err != nil || n < 1 || strings.ContainsAny(q, " :{}") {
			p.bad(name, v, "comma-separated queue=weight pairs with weights >= 1, e.g. heavy=6,medium=3,default=1")
			return runner.DefaultQueues()
		}
		out[q] = n
	}
	if len(out) == 0 {
		p.bad(name, v, "at least one queue=weight pair")
		return runner.DefaultQueues()
	}
	return out
}

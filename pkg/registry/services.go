package registry

// This file decodes services: kind, base URL, headers, limits, retry policy, health probe, mock knobs.

import (
	"math"
	"net/url"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/cao-run/cao/pkg/render"
)

func (l *loader) service(name, path string, n *yaml.Node) *Service {
	svc := &Service{
		Name:             name,
		Timeout:          DefaultTimeout,
		LeaseTTL:         DefaultLeaseTTL,
		Retry:            RetryPolicy{MaxAttempts: DefaultMaxAttempts, InitialBackoff: DefaultInitialBackoff, MaxBackoff: DefaultMaxBackoff},
		MaxResponseBytes: DefaultMaxResponseBytes,
	}
	f := l.fields(n, path, serviceFields)
	if f == nil {
		return svc
	}
	svc.Secrets = l.secretsOf(n)

	if k := f["kind"]; k != nil {
		if s, ok := l.str(k, join(path, "kind")); ok {
			if s != KindHTTP && s != KindMock {
				l.errorf(join(path, "kind"), "unknown kind %s (expected %s or %s)", l.show(k), KindHTTP, KindMock)
			} else {
				svc.Kind = s
			}
		}
	} else if f["base_url"] != nil {
		svc.Kind = KindHTTP
	} else {
		l.errorf(join(path, "kind"), "required (%s with base_url, or %s)", KindHTTP, KindMock)
	}

	if svc.Kind == KindMock {
		for _, k := range []string{"base_url", "headers", "health", "budget_headers"} {
			if f[k] != nil {
				l.errorf(join(path, k), "not allowed for a %s service (only for %s)", KindMock, KindHTTP)
			}
		}
	}
	if svc.Kind == KindHTTP {
		for _, k := range mockFields {
			if f[k] != nil {
				l.errorf(join(path, k), "only allowed for %s services (this one is %s)", KindMock, KindHTTP)
			}
		}
	}

	if v := f["base_url"]; v != nil && svc.Kind != KindMock {
		p := join(path, "base_url")
		if s, ok := l.str(v, p); ok {
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				l.errorf(p, "expected an absolute http or https URL such as \"https://api.example.com/v1\", got %s", l.show(v))
			} else {
				svc.BaseURL = strings.TrimRight(s, "/")
			}
		}
	} else if svc.Kind == KindHTTP {
		l.errorf(join(path, "base_url"), "required for a %s service", KindHTTP)
	}

	if v := f["headers"]; v != nil && svc.Kind != KindMock {
		svc.Headers = l.headers(v, join(path, "headers"))
		for _, h := range svc.Headers {
			svc.Secrets = append(svc.Secrets, h)
			l.allSecrets = append(l.allSecrets, h)
		}
	}
	if v := f["timeout"]; v != nil {
		if d, ok := l.duration(v, join(path, "timeout"), true); ok {
			svc.Timeout = d
		}
	}
	if v := f["max_concurrency"]; v != nil {
		if i, ok := l.nonNegInt(v, join(path, "max_concurrency")); ok {
			svc.MaxConcurrency = i
		}
	}
	if v := f["lease_ttl"]; v != nil {
		if d, ok := l.duration(v, join(path, "lease_ttl"), true); ok {
			svc.LeaseTTL = d
		}
	}
	svc.RateLimits = l.rateLimits(f, path)
	svc.KeyLimit = l.keyLimit(f, path)
	if v := f["retry"]; v != nil {
		svc.Retry = l.retry(v, join(path, "retry"), svc.Retry)
	}
	if v := f["health"]; v != nil && svc.Kind != KindMock {
		svc.Health = l.health(v, join(path, "health"))
	}
	if v := f["max_response_bytes"]; v != nil {
		p := join(path, "max_response_bytes")
		if i, ok := l.integer(v, p); ok {
			if i <= 0 {
				l.errorf(p, "must be positive, got %d", i)
			} else {
				svc.MaxResponseBytes = i
			}
		}
	}
	if svc.Kind == KindMock {
		svc.Mock = l.mock(f, path, MockSpec{})
	}
	l.adaptiveLimits(f, path, svc)
	return svc
}

func (l *loader) headers(n *yaml.Node, path string) map[string]string {
	es := l.entries(n, path)
	if es == nil {
		return nil
	}
	out := make(map[string]string, len(es))
	for _, e := range es {
		p := join(path, e.key)
		if !headerNameRe.MatchString(e.key) {
			l.errorf(p, "invalid header name %q", e.key)
			continue
		}
		if s, ok := l.str(e.val, p); ok {
			if strings.ContainsAny(s, "\r\n") {
				l.errorf(p, "header values must not contain line breaks")
				continue
			}
			out[e.key] = s
		}
	}
	return out
}

func (l *loader) rateLimit(n *yaml.Node, path string) *RateLimit {
	f := l.fields(n, path, rateLimitFields)
	if f == nil {
		return nil
	}
	rl := &RateLimit{}
	ok := true
	if v := f["requests"]; v == nil {
		l.errorf(join(path, "requests"), "required (a positive integer)")
		ok = false
	} else if i, iok := l.integer(v, join(path, "requests")); !iok {
		ok = false
	} else if i < 1 || i > math.MaxInt32 {
		l.errorf(join(path, "requests"), "must be a positive integer, got %d", i)
		ok = false
	} else {
		rl.Requests = int(i)
	}
	if v := f["per"]; v == nil {
		l.errorf(join(path, "per"), "required (a duration such as \"1s\" or \"1m\")")
		ok = false
	} else if d, dok := l.duration(v, join(path, "per"), true); !dok {
		ok = false
	} else {
		rl.Per = d
	}
	if !ok {
		return nil
	}
	return rl
}

// retry reads a retry policy, field by field over base.
func (l *loader) retry(n *yaml.Node, path string, base RetryPolicy) RetryPolicy {
	f := l.fields(n, path, retryFields)
	if f == nil {
		return base
	}
	r := base
	if v := f["max_attempts"]; v != nil {
		p := join(path, "max_attempts")
		if i, ok := l.integer(v, p); ok {
			if i < 1 || i > math.MaxInt32 {
				l.errorf(p, "must be at least 1, got %d", i)
			} else {
				r.MaxAttempts = int(i)
			}
		}
	}
	if v := f["initial_backoff"]; v != nil {
		if d, ok := l.duration(v, join(path, "initial_backoff"), false); ok {
			r.InitialBackoff = d
		}
	}
	if v := f["max_backoff"]; v != nil {
		if d, ok := l.duration(v, join(path, "max_backoff"), false); ok {
			r.MaxBackoff = d
		}
	}
	if r.InitialBackoff > r.MaxBackoff {
		l.errorf(join(path, "initial_backoff"), "must not be greater than max_backoff (%s > %s)", r.InitialBackoff, r.MaxBackoff)
	}
	return r
}

func (l *loader) health(n *yaml.Node, path string) *HealthProbe {
	f := l.fields(n, path, healthFields)
	if f == nil {
		return nil
	}
	h := &HealthProbe{Method: "GET"}
	if v := f["method"]; v != nil {
		h.Method, _ = l.method(v, join(path, "method"))
	}
	if v := f["path"]; v == nil {
		l.errorf(join(path, "path"), "required (e.g. /health)")
	} else if s, ok := l.str(v, join(path, "path")); ok && l.checkPath(v, s, join(path, "path")) {
		h.Path = s
	}
	return h
}

func (l *loader) method(n *yaml.Node, path string) (string, bool) {
	s, ok := l.str(n, path)
	if !ok {
		return "", false
	}
	m := strings.ToUpper(s)
	if !slices.Contains(httpMethods, m) {
		l.errorf(path, "unknown HTTP method %s (expected one of: %s)", l.show(n), strings.Join(httpMethods, ", "))
		return "", false
	}
	return m, true
}

// checkPath accepts only paths relative to the service's base URL: a request can never be sent to
// another host.
func (l *loader) checkPath(n *yaml.Node, s, path string) bool {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.Contains(s, "://") {
		l.errorf(path, "must start with \"/\" and be relative to the service's base_url (no \"//\" prefix, no \"://\"), got %s", l.show(n))
		return false
	}
	return true
}

// mock reads the mock knobs present in f, field by field over base.
func (l *loader) mock(f map[string]*yaml.Node, path string, base MockSpec) MockSpec {
	m := base
	if v := f["latency"]; v != nil {
		if d, ok := l.duration(v, join(path, "latency"), false); ok {
			m.Latency = d
		}
	}
	if v := f["fail_times"]; v != nil {
		if i, ok := l.nonNegInt(v, join(path, "fail_times")); ok {
			m.FailTimes = i
		}
	}
	if v := f["failure_rate"]; v != nil {
		p := join(path, "failure_rate")
		if x, ok := l.float(v, p); ok {
			if x < 0 || x > 1 {
				l.errorf(p, "must be between 0 and 1, got %s", l.show(v))
			} else {
				m.FailureRate = x
			}
		}
	}
	if v := f["output"]; v != nil {
		p := join(path, "output")
		if out, ok := l.value(v, p); ok {
			if t, err := render.Compile(out); err != nil {
				l.templateErrors(p, err)
			} else {
				m.Output, m.OutputTemplate = out, t
			}
		}
	}
	return m
}

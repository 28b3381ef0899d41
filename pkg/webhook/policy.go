// Package webhook delivers completion webhooks: one signed POST (Standard Webhooks) each time a job
// becomes COMPLETED, FAILED or CANCELLED, at least once. The change that ends a job inserts the
// delivery, payload included, in the same statement (package store), so it survives every restart;
// a Deliverer in each worker claims due deliveries from the database, posts them without following
// redirects, and retries with backoff for more than 24 hours under the same webhook-id.
package webhook

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
)

// ErrNotAllowed means a webhook_url may not be used: its host is not allow-listed, it is not an
// absolute http(s) URL, or webhooks are not configured.
var ErrNotAllowed = errors.New("webhook not allowed")

// Policy says which URLs jobs may name (CAO_WEBHOOK_ALLOWED_HOSTS).
type Policy struct {
	hosts []string // lower-case "host" (any port) or "host:port"
}

// NewPolicy parses comma-separated `host` or `host:port` entries. A bare host allows any port of it;
// host:port only that port. Empty: every webhook_url is refused.
func NewPolicy(list string) (Policy, error) {
	var p Policy
	for _, e := range strings.Split(list, ",") {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if strings.ContainsAny(e, "/@?#* ") {
			return Policy{}, fmt.Errorf("%q: expected host or host:port", e)
		}
		if h, port, err := net.SplitHostPort(e); err == nil && (h == "" || port == "") {
			return Policy{}, fmt.Errorf("%q: expected host or host:port", e)
		}
		p.hosts = append(p.hosts, e)
	}
	return p, nil
}

// Empty reports whether no host is allowed.
func (p Policy) Empty() bool { return len(p.hosts) == 0 }

// Check returns the URL as it will be called, or an error wrapping ErrNotAllowed that says why.
func (p Policy) Check(raw string) (string, error) {
	if p.Empty() {
		return "", fmt.Errorf("%w: webhooks are not enabled on this server (CAO_WEBHOOK_ALLOWED_HOSTS is empty)", ErrNotAllowed)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("%w: webhook_url must be an absolute http or https URL", ErrNotAllowed)
	}
	if u.User != nil {
		return "", fmt.Errorf("%w: webhook_url must not carry credentials", ErrNotAllowed)
	}
	u.Fragment = ""
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if !slices.Contains(p.hosts, host) && !slices.Contains(p.hosts, net.JoinHostPort(host, port)) {
		return "", fmt.Errorf("%w: host %q is not in CAO_WEBHOOK_ALLOWED_HOSTS", ErrNotAllowed, u.Host)
	}
	return u.String(), nil
}

package registry

// This file decodes the limits that adapt to the provider and share a service between tenants:
// adaptive (AIMD concurrency), budget_headers (follow the rate-limit budget a service reports on its
// answers) and max_concurrency_per_tenant.

import (
	"gopkg.in/yaml.v3"
)

var adaptiveFields = []string{"min"}

// adaptiveLimits reads adaptive and budget_headers from a service's fields f into svc, once its
// kind and max_concurrency are known.
func (l *loader) adaptiveLimits(f map[string]*yaml.Node, path string, svc *Service) {
	svc.BudgetHeaders = svc.Kind == KindHTTP
	if v := f["budget_headers"]; v != nil && svc.Kind == KindHTTP {
		if b, ok := l.boolean(v, join(path, "budget_headers")); ok {
			svc.BudgetHeaders = b
		}
	}
	if v := f["adaptive"]; v != nil {
		svc.Adaptive = l.adaptive(v, join(path, "adaptive"), svc.MaxConcurrency, f["max_concurrency"] != nil)
	}
	if v := f["max_concurrency_per_tenant"]; v != nil {
		p := join(path, "max_concurrency_per_tenant")
		if i, ok := l.integer(v, p); ok {
			switch {
			case i < 1:
				l.errorf(p, "must be at least 1, got %d", i)
			case svc.MaxConcurrency <= 0:
				l.errorf(p, "requires a positive max_concurrency (a tenant's share of it)")
			case i > int64(svc.MaxConcurrency):
				l.errorf(p, "must not exceed max_concurrency (%d), got %d", svc.MaxConcurrency, i)
			default:
				svc.MaxConcurrencyPerTenant = int(i)
			}
		}
	}
}

// adaptive reads adaptive: {min: N}. min defaults to 1; the service must have a max_concurrency,
// which is where the effective limit starts and the most it grows to.
func (l *loader) adaptive(n *yaml.Node, path string, maxConcurrency int, maxSet bool) *Adaptive {
	f := l.fields(n, path, adaptiveFields)
	if f == nil {
		return nil
	}
	a := &Adaptive{Min: 1}
	if v := f["min"]; v != nil {
		p := join(path, "min")
		i, ok := l.integer(v, p)
		if !ok {
			return nil
		}
		if i < 1 || (maxConcurrency > 0 && i > int64(maxConcurrency)) {
			if maxConcurrency > 0 {
				l.errorf(p, "must be between 1 and max_concurrency (%d), got %d", maxConcurrency, i)
			} else {
				l.errorf(p, "must be at least 1, got %d", i)
			}
			return nil
		}
		a.Min = int(i)
	}
	if maxConcurrency <= 0 {
		if maxSet {
			l.errorf(path, "requires a positive max_concurrency (the limit it starts at and never exceeds); max_concurrency is 0 (unlimited)")
		} else {
			l.errorf(path, "requires max_concurrency (the limit it starts at and never exceeds)")
		}
		return nil
	}
	return a
}

// boolean reads true or false (YAML 1.2 core schema: true, false, True, FALSE...).
func (l *loader) boolean(n *yaml.Node, path string) (bool, bool) {
	if l.bad[n] {
		return false, false
	}
	if n.Kind == yaml.ScalarNode && l.typed(n) == "!!bool" {
		var b bool
		if err := (&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: n.Value}).Decode(&b); err == nil {
			return b, true
		}
	}
	l.errorf(path, "expected true or false, got %s", l.show(n))
	return false, false
}

package registry

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem found in a registry file: which file, which field and what was expected.
type Error struct {
	File    string // the file as given to Load or Parse
	Path    string // the field, e.g. "features.business_plan.steps[1].needs"; "" for the whole file
	Message string // what is wrong and what was expected
}

// Error returns "file: path: message", on one line: a line break in a key or in a value quoted by
// the message is written \n (or \r), so that errors joined by Parse stay one per line.
func (e *Error) Error() string {
	if e.Path == "" {
		return lineBreaks.Replace(e.File + ": " + e.Message)
	}
	return lineBreaks.Replace(e.File + ": " + e.Path + ": " + e.Message)
}

var lineBreaks = strings.NewReplacer("\n", `\n`, "\r", `\r`)

var (
	// nameRe constrains service, feature and step names: they appear in Redis keys, idempotency keys
	// ("<job>/<step>/<run>") and template paths (.steps.NAME.output).
	nameRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	// headerNameRe is an HTTP token (RFC 9110).
	headerNameRe = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	httpMethods  = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
)

var (
	topFields     = []string{"services", "features"}
	serviceFields = []string{"kind", "base_url", "headers", "timeout", "max_concurrency", "lease_ttl", "rate_limit",
		"retry", "health", "latency", "fail_times", "failure_rate", "output", "max_response_bytes", "adaptive", "budget_headers",
		"max_concurrency_per_tenant", "rate_limits", "concurrency_key", "max_concurrency_per_key"}
	rateLimitFields = []string{"requests", "per"}
	retryFields     = []string{"max_attempts", "initial_backoff", "max_backoff"}
	healthFields    = []string{"method", "path"}
	featureFields   = []string{"description", "input", "steps"}
	stepFields      = []string{"name", "service", "queue", "needs", "request", "timeout", "retry", "latency",
		"fail_times", "failure_rate", "output", "concurrency_key", "max_concurrency_per_key"}
	requestFields = []string{"method", "path", "query", "headers", "body"}
	mockFields    = []string{"latency", "fail_times", "failure_rate", "output"}
)

// Load reads, expands (from the process environment) and validates the registry file at path.
func Load(path string) (*Registry, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the registry path is the operator's configuration
	if err != nil {
		return nil, fmt.Errorf("load registry: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse validates a registry document; path is only used in error messages and Registry.Path, and
// env looks up the variables of ${VAR} references (os.LookupEnv in Load). Every problem found is
// returned as an *Error, several joined with errors.Join (one per line). Error messages never contain
// the value of an environment variable or of a header.
//
// Besides services and features, top-level keys starting with "x-" are allowed and ignored, as in
// Docker Compose, to hold YAML anchors shared by several services (x-retry: &retry {...}).
func Parse(path string, data []byte, env func(string) (string, bool)) (*Registry, error) {
	if env == nil {
		env = func(string) (string, bool) { return "", false }
	}
	l := &loader{file: path, env: env, exp: map[*yaml.Node]*expansion{}, bad: map[*yaml.Node]bool{}}
	reg := l.parse(data)
	if len(l.errs) > 0 {
		errs := make([]error, len(l.errs))
		rd := newRedactor(secretList(l.allSecrets))
		for i, e := range l.errs {
			// Belt and braces: whatever a message quotes, no secret survives, in any form.
			e.Message = rd.replace(e.Message)
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	return reg, nil
}

// expansion records what ${...} references turned a scalar into.
type expansion struct {
	raw    string   // the scalar as written in the file
	vars   []string // variables referenced
	values []string // values substituted
}

type loader struct {
	file       string
	env        func(string) (string, bool)
	errs       []*Error
	exp        map[*yaml.Node]*expansion
	allSecrets []string
	visited    map[*yaml.Node]bool
	bad        map[*yaml.Node]bool // scalars whose expansion failed: already reported, not checked again
}

func (l *loader) errorf(path, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: l.file, Path: path, Message: fmt.Sprintf(format, args...)})
}

func (l *loader) parse(data []byte) *Registry {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		l.errorf("", "invalid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		return nil
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		l.errorf("", "empty file (expected a mapping with services and features)")
		return nil
	}
	root := resolve(doc.Content[0])
	if msg := checkAliases(root); msg != "" {
		l.errorf("", "%s", msg)
		return nil
	}
	l.visited = map[*yaml.Node]bool{}
	l.expandAll(root, "")

	top := l.fields(root, "", topFields)
	if top == nil {
		return nil
	}
	reg := &Registry{Path: l.file, Services: map[string]*Service{}, Features: map[string]*Feature{}}
	// Services first, whatever the order in the file: steps are checked against them.
	declared := map[string]string{} // service name -> kind ("" when invalid)
	if n := top["services"]; n != nil {
		for _, kv := range l.entries(n, "services") {
			p := join("services", kv.key)
			if !nameRe.MatchString(kv.key) {
				l.errorf(p, "invalid service name %q (letters, digits, _ and - only)", kv.key)
			}
			svc := l.service(kv.key, p, kv.val)
			declared[kv.key] = svc.Kind
			reg.Services[kv.key] = svc
		}
	}
	if n := top["features"]; n != nil {
		for _, kv := range l.entries(n, "features") {
			p := join("features", kv.key)
			if !nameRe.MatchString(kv.key) {
				l.errorf(p, "invalid feature name %q (letters, digits, _ and - only)", kv.key)
			}
			reg.Features[kv.key] = l.feature(kv.key, p, kv.val, reg.Services, declared)
		}
	}
	for _, svc := range reg.Services {
		svc.Secrets = secretList(svc.Secrets)
		if len(svc.Secrets) > 0 {
			redactorFor(svc.Secrets) // built once here, not on the first call
		}
	}
	return reg
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func list(names []string) string {
	if len(names) == 0 {
		return "none declared"
	}
	return strings.Join(names, ", ")
}

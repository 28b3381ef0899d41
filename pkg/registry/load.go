package registry

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cao-run/cao/pkg/render"
	"github.com/cao-run/cao/pkg/schema"
)

// Error is one problem found in a registry file: which file, which field and what was expected.
type Error struct {
	File    string // the file as given to Load or Parse
	Path    string // the field, e.g. "features.business_plan.steps[1].needs"; "" for the whole file
	Message string // what is wrong and what was expected
}

// Error returns "file: path: message".
func (e *Error) Error() string {
	if e.Path == "" {
		return e.File + ": " + e.Message
	}
	return e.File + ": " + e.Path + ": " + e.Message
}

// minSecretLen is the shortest value collected as a secret: redacting "1", "on" or "GET" everywhere
// would garble logs without protecting anything.
const minSecretLen = 4

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
		"retry", "health", "latency", "fail_times", "failure_rate", "output", "max_response_bytes"}
	rateLimitFields = []string{"requests", "per"}
	retryFields     = []string{"max_attempts", "initial_backoff", "max_backoff"}
	healthFields    = []string{"method", "path"}
	featureFields   = []string{"description", "input", "steps"}
	stepFields      = []string{"name", "service", "queue", "needs", "request", "timeout", "retry", "latency",
		"fail_times", "failure_rate", "output"}
	requestFields = []string{"method", "path", "query", "headers", "body"}
	mockFields    = []string{"latency", "fail_times", "failure_rate", "output"}
)

// Load reads, expands (from the process environment) and validates the registry file at path.
func Load(path string) (*Registry, error) {
	data, err := os.ReadFile(path)
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
		for i, e := range l.errs {
			// Belt and braces: whatever a message quotes, no secret survives.
			e.Message = redact(secretList(l.allSecrets), e.Message)
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
	}
	return reg
}

// expandAll expands ${...} in every scalar value (never in mapping keys), in place, before any typing.
// An expanded plain scalar is re-typed from its new text, so max_concurrency: ${N:-8} is an integer; a
// quoted one stays a string.
func (l *loader) expandAll(n *yaml.Node, path string) {
	if n == nil || l.visited[n] {
		return
	}
	l.visited[n] = true
	switch n.Kind {
	case yaml.AliasNode:
		l.expandAll(n.Alias, path)
	case yaml.DocumentNode:
		for _, c := range n.Content {
			l.expandAll(c, path)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			l.expandAll(c, fmt.Sprintf("%s[%d]", path, i))
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			l.expandAll(n.Content[i+1], join(path, n.Content[i].Value))
		}
	case yaml.ScalarNode:
		out, vars, values, err := expand(n.Value, l.env)
		if err != nil {
			l.errorf(path, "%v", err)
			l.bad[n] = true
			return
		}
		if vars == nil {
			if out != n.Value { // only "$$" escapes
				n.Value = out
			}
			return
		}
		l.exp[n] = &expansion{raw: n.Value, vars: vars, values: values}
		l.allSecrets = append(l.allSecrets, values...)
		n.Value = out
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0 {
			n.Tag = "" // re-resolve from the expanded text
		}
	}
}

// show quotes a scalar for an error message; an expanded value is never shown, only what was written.
func (l *loader) show(n *yaml.Node) string {
	if e, ok := l.exp[n]; ok {
		return fmt.Sprintf("%q (expanded value not shown)", e.raw)
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if n.ShortTag() == "!!null" {
		return "null"
	}
	if n.ShortTag() == "!!str" {
		return fmt.Sprintf("%q", n.Value)
	}
	return n.Value
}

// secretsOf collects the expanded values found under n.
func (l *loader) secretsOf(n *yaml.Node) []string {
	var out []string
	seen := map[*yaml.Node]bool{}
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil || seen[n] {
			return
		}
		seen[n] = true
		if e, ok := l.exp[n]; ok {
			out = append(out, e.values...)
		}
		if n.Kind == yaml.AliasNode {
			walk(n.Alias)
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return out
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNull(n *yaml.Node) bool {
	n = resolve(n)
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

type entry struct {
	key string
	val *yaml.Node
}

// entries returns the pairs of a mapping in file order, reporting duplicate keys; nil if n is not a
// mapping. YAML merge keys ("<<: *anchor") are honoured: merged pairs come after the explicit ones,
// which win.
func (l *loader) entries(n *yaml.Node, path string) []entry {
	n = resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(path, "expected a mapping, got %s", l.show(n))
		return nil
	}
	seen := map[string]bool{}
	out := make([]entry, 0, len(n.Content)/2)
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := resolve(n.Content[i])
		if k.Kind != yaml.ScalarNode {
			l.errorf(path, "keys must be strings, got %s", l.show(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			v := resolve(n.Content[i+1])
			if v.Kind == yaml.SequenceNode {
				for _, c := range v.Content {
					merged = append(merged, resolve(c))
				}
			} else {
				merged = append(merged, v)
			}
			continue
		}
		if seen[k.Value] {
			l.errorf(join(path, k.Value), "duplicate key")
			continue
		}
		seen[k.Value] = true
		out = append(out, entry{key: k.Value, val: resolve(n.Content[i+1])})
	}
	for _, m := range merged {
		if m.Kind != yaml.MappingNode {
			l.errorf(join(path, "<<"), "can only merge mappings, got %s", l.show(m))
			continue
		}
		for _, e := range l.entries(m, path) {
			if !seen[e.key] {
				seen[e.key] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// fields reads a mapping with a fixed set of keys, reporting unknown ones; null values count as
// absent. It returns nil (after reporting) if n is not a mapping.
func (l *loader) fields(n *yaml.Node, path string, allowed []string) map[string]*yaml.Node {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		what := "nothing"
		if n != nil {
			what = l.show(n)
		}
		if path == "" {
			l.errorf(path, "expected a mapping with keys %s, got %s", strings.Join(allowed, ", "), what)
		} else {
			l.errorf(path, "expected a mapping, got %s", what)
		}
		return nil
	}
	out := map[string]*yaml.Node{}
	for _, e := range l.entries(n, path) {
		if path == "" && strings.HasPrefix(e.key, "x-") {
			continue // top-level extension fields, as in Docker Compose: a place for YAML anchors
		}
		if !slices.Contains(allowed, e.key) {
			l.errorf(join(path, e.key), "unknown field (expected one of: %s)", strings.Join(allowed, ", "))
			continue
		}
		if !isNull(e.val) {
			out[e.key] = e.val
		}
	}
	return out
}

// str reads a string. Numbers and booleans are taken as written (a header value of 3 is "3").
func (l *loader) str(n *yaml.Node, path string) (string, bool) {
	if l.bad[n] {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		l.errorf(path, "expected a string, got %s", l.show(n))
		return "", false
	}
	return n.Value, true
}

// typed returns the tag of a scalar, re-resolving an expanded quoted string ("${N}") so that numbers
// and booleans can come from the environment.
func (l *loader) typed(n *yaml.Node) string {
	tag := n.ShortTag()
	if _, ok := l.exp[n]; ok && tag == "!!str" {
		tag = (&yaml.Node{Kind: yaml.ScalarNode, Value: n.Value}).ShortTag()
	}
	return tag
}

func (l *loader) integer(n *yaml.Node, path string) (int64, bool) {
	if l.bad[n] {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && l.typed(n) == "!!int" {
		var i int64
		if err := (&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: n.Value}).Decode(&i); err == nil {
			return i, true
		}
	}
	l.errorf(path, "expected an integer, got %s", l.show(n))
	return 0, false
}

func (l *loader) nonNegInt(n *yaml.Node, path string) (int, bool) {
	i, ok := l.integer(n, path)
	if !ok {
		return 0, false
	}
	if i < 0 || i > math.MaxInt32 {
		l.errorf(path, "must be between 0 and %d, got %d", math.MaxInt32, i)
		return 0, false
	}
	return int(i), true
}

func (l *loader) float(n *yaml.Node, path string) (float64, bool) {
	if l.bad[n] {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode {
		if tag := l.typed(n); tag == "!!int" || tag == "!!float" {
			var f float64
			if err := (&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!float", Value: n.Value}).Decode(&f); err == nil && !math.IsNaN(f) {
				return f, true
			}
		}
	}
	l.errorf(path, "expected a number, got %s", l.show(n))
	return 0, false
}

// duration reads a Go duration string ("60s", "2m", "1m30s"). Bare numbers are refused: "60" could
// mean seconds or milliseconds.
func (l *loader) duration(n *yaml.Node, path string, positive bool) (time.Duration, bool) {
	if l.bad[n] {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || l.typed(n) != "!!str" {
		if n.Kind == yaml.ScalarNode && (l.typed(n) == "!!int" || l.typed(n) == "!!float") {
			l.errorf(path, "invalid duration %s: a number needs a unit (e.g. \"%ss\" or \"%sms\")", l.show(n), n.Value, n.Value)
		} else {
			l.errorf(path, "expected a duration such as \"30s\" or \"1m30s\", got %s", l.show(n))
		}
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		l.errorf(path, "invalid duration %s (expected Go syntax such as \"500ms\", \"30s\", \"1m30s\")", l.show(n))
		return 0, false
	}
	if d < 0 || (positive && d == 0) {
		want := "must not be negative"
		if positive {
			want = "must be positive"
		}
		l.errorf(path, "%s, got %s", want, l.show(n))
		return 0, false
	}
	return d, true
}

// value converts a node to a JSON-compatible value: map[string]any, []any, string, int, float64,
// bool or nil.
func (l *loader) value(n *yaml.Node, path string) (any, bool) {
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]any{}
		ok := true
		for _, e := range l.entries(n, path) {
			v, vok := l.value(e.val, join(path, e.key))
			ok = ok && vok
			m[e.key] = v
		}
		return m, ok
	case yaml.SequenceNode:
		s := make([]any, len(n.Content))
		ok := true
		for i, c := range n.Content {
			v, vok := l.value(c, fmt.Sprintf("%s[%d]", path, i))
			ok = ok && vok
			s[i] = v
		}
		return s, ok
	case yaml.ScalarNode:
		if l.bad[n] {
			return nil, false
		}
		switch n.ShortTag() {
		case "!!null":
			return nil, true
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err == nil {
				return b, true
			}
		case "!!int":
			var i int
			if err := n.Decode(&i); err == nil {
				return i, true
			}
			var f float64 // too large for int
			if err := n.Decode(&f); err == nil {
				return f, true
			}
		case "!!float":
			var f float64
			if err := n.Decode(&f); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
				return f, true
			}
			l.errorf(path, "invalid number %s (JSON has no NaN or infinity)", l.show(n))
			return nil, false
		}
		return n.Value, true // strings, timestamps and anything else: as written
	}
	l.errorf(path, "unsupported YAML value")
	return nil, false
}

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
		for _, k := range []string{"base_url", "headers", "health"} {
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
	if v := f["rate_limit"]; v != nil {
		svc.RateLimit = l.rateLimit(v, join(path, "rate_limit"))
	}
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

// templateErrors reports the errors of render.Compile at their full path.
func (l *loader) templateErrors(path string, err error) {
	for _, e := range flatten(err) {
		var pe *render.PathError
		if errors.As(e, &pe) {
			l.errorf(subPath(path, pe.Path), "%v", pe.Err)
		} else {
			l.errorf(path, "%v", e)
		}
	}
}

func subPath(path, sub string) string {
	switch {
	case sub == "":
		return path
	case strings.HasPrefix(sub, "["):
		return path + sub
	}
	return join(path, sub)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func (l *loader) feature(name, path string, n *yaml.Node, services map[string]*Service, declared map[string]string) *Feature {
	feat := &Feature{Name: name}
	f := l.fields(n, path, featureFields)
	if f == nil {
		return feat
	}
	if v := f["description"]; v != nil {
		feat.Description, _ = l.str(v, join(path, "description"))
	}
	if v := f["input"]; v != nil {
		p := join(path, "input")
		if doc, ok := l.value(v, p); ok {
			s, err := schema.Compile(doc)
			if err != nil {
				for _, e := range flatten(err) {
					var ce *schema.CompileError
					if errors.As(e, &ce) {
						l.errorf(subPath(p, ce.Path), "%s", ce.Message)
					} else {
						l.errorf(p, "%v", e)
					}
				}
			} else {
				feat.Input = s
			}
		}
	}

	sp := join(path, "steps")
	v := f["steps"]
	if v == nil {
		l.errorf(sp, "required (a list of at least one step)")
		return feat
	}
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		l.errorf(sp, "expected a list of at least one step, got %s", l.show(v))
		return feat
	}

	// Names first, so that needs may point forward in the file.
	names := make([]string, 0, len(v.Content))
	first := map[string]int{}
	stepFieldsOf := make([]map[string]*yaml.Node, len(v.Content))
	for i, sn := range v.Content {
		p := fmt.Sprintf("%s[%d]", sp, i)
		sf := l.fields(sn, p, stepFields)
		stepFieldsOf[i] = sf
		if sf == nil {
			continue
		}
		nn := sf["name"]
		if nn == nil {
			l.errorf(join(p, "name"), "required")
			continue
		}
		s, ok := l.str(nn, join(p, "name"))
		if !ok {
			continue
		}
		if !nameRe.MatchString(s) {
			l.errorf(join(p, "name"), "invalid step name %q (letters, digits, _ and - only)", s)
			continue
		}
		if j, dup := first[s]; dup {
			l.errorf(join(p, "name"), "duplicate step %q (also steps[%d])", s, j)
			continue
		}
		first[s] = i
		names = append(names, s)
	}

	for i, sn := range v.Content {
		if stepFieldsOf[i] == nil {
			continue
		}
		st := l.step(name, fmt.Sprintf("%s[%d]", sp, i), sn, stepFieldsOf[i], names, services, declared)
		if st != nil {
			if j, ok := first[st.Name]; ok && j == i {
				feat.Steps = append(feat.Steps, st)
			}
		}
	}
	l.cycles(feat, sp, first)
	return feat
}

func (l *loader) step(feature, path string, n *yaml.Node, f map[string]*yaml.Node, names []string, services map[string]*Service, declared map[string]string) *Step {
	st := &Step{Queue: DefaultQueue}
	if v := f["name"]; v != nil {
		st.Name = v.Value
	}

	var svc *Service
	kind := ""
	if v := f["service"]; v == nil {
		l.errorf(join(path, "service"), "required")
	} else if s, ok := l.str(v, join(path, "service")); ok {
		k, known := declared[s]
		if !known {
			l.errorf(join(path, "service"), "unknown service %q (services: %s)", s, list(keys(declared)))
		} else {
			st.Service, svc, kind = s, services[s], k
		}
	}
	if svc != nil {
		st.Timeout, st.Retry, st.Mock = svc.Timeout, svc.Retry, svc.Mock
	}

	if v := f["queue"]; v != nil {
		p := join(path, "queue")
		if s, ok := l.str(v, p); ok {
			if s == "" || strings.ContainsAny(s, " \t\r\n:{}") {
				l.errorf(p, "invalid queue name %s (must be non-empty, without spaces, ':' or braces)", l.show(v))
			} else {
				st.Queue = s
			}
		}
	}

	if v := f["needs"]; v != nil {
		p := join(path, "needs")
		if v.Kind != yaml.SequenceNode {
			l.errorf(p, "expected a list of step names, got %s", l.show(v))
		} else {
			for i, c := range v.Content {
				c = resolve(c)
				s, ok := l.str(c, fmt.Sprintf("%s[%d]", p, i))
				if !ok {
					continue
				}
				switch {
				case !slices.Contains(names, s):
					l.errorf(p, "unknown step %q (steps of %s: %s)", s, feature, strings.Join(names, ", "))
				case slices.Contains(st.Needs, s):
					l.errorf(p, "%q is listed twice", s)
				default:
					st.Needs = append(st.Needs, s)
				}
			}
		}
	}

	if v := f["timeout"]; v != nil {
		if d, ok := l.duration(v, join(path, "timeout"), true); ok {
			st.Timeout = d
		}
	}
	if v := f["retry"]; v != nil {
		st.Retry = l.retry(v, join(path, "retry"), st.Retry)
	}

	if kind == KindHTTP {
		for _, k := range mockFields {
			if f[k] != nil {
				l.errorf(join(path, k), "only allowed for steps of %s services (service %s is %s)", KindMock, st.Service, KindHTTP)
			}
		}
	} else if kind == KindMock {
		st.Mock = l.mock(f, path, st.Mock)
	}

	var secrets []string
	if v := f["request"]; v != nil {
		if kind == KindMock {
			l.errorf(join(path, "request"), "only allowed for steps of %s services (service %s is %s)", KindHTTP, st.Service, KindMock)
		} else {
			st.Request, secrets = l.request(v, join(path, "request"))
		}
	} else if kind == KindHTTP {
		st.Request = defaultRequest()
	}
	if svc != nil {
		// A step's request headers and query carry credentials (literal header values count too); its
		// body and other settings are content, such as a model name, and would be mangled by redaction.
		svc.Secrets = append(svc.Secrets, secrets...)
	}
	return st
}

func defaultRequest() *Request {
	body := map[string]any{}
	return &Request{
		Method:       "POST",
		Path:         "/",
		Body:         body,
		PathTemplate: must(render.CompileString("/")),
		BodyTemplate: must(render.Compile(body)),
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// request reads a step's request and compiles its templates; it also returns the literal header
// values, which are secrets.
func (l *loader) request(n *yaml.Node, path string) (*Request, []string) {
	f := l.fields(n, path, requestFields)
	if f == nil {
		return nil, nil
	}
	r := &Request{Method: "POST", Path: "/"}
	// Values from the environment in the headers and query are credentials.
	secrets := append(l.secretsOf(f["headers"]), l.secretsOf(f["query"])...)
	if v := f["method"]; v != nil {
		if m, ok := l.method(v, join(path, "method")); ok {
			r.Method = m
		}
	}
	if v := f["path"]; v != nil {
		p := join(path, "path")
		if s, ok := l.str(v, p); ok && l.checkPath(v, s, p) {
			r.Path = s
		}
	}
	if t, err := render.CompileString(r.Path); err != nil {
		l.templateErrors(join(path, "path"), err)
	} else {
		r.PathTemplate = t
	}

	compileMap := func(key string, m map[string]string) map[string]*render.Template {
		out := make(map[string]*render.Template, len(m))
		for _, k := range keys(m) {
			t, err := render.CompileString(m[k])
			if err != nil {
				l.templateErrors(join(join(path, key), k), err)
				continue
			}
			out[k] = t
		}
		return out
	}
	if v := f["query"]; v != nil {
		p := join(path, "query")
		r.Query = map[string]string{}
		for _, e := range l.entries(v, p) {
			if s, ok := l.str(e.val, join(p, e.key)); ok {
				r.Query[e.key] = s
			}
		}
		r.QueryTemplates = compileMap("query", r.Query)
	}
	if v := f["headers"]; v != nil {
		r.Headers = l.headers(v, join(path, "headers"))
		r.HeaderTemplates = compileMap("headers", r.Headers)
		for _, h := range r.Headers {
			if !strings.Contains(h, "{{") { // a template is not a secret; its rendered value is the caller's business
				secrets = append(secrets, h)
				l.allSecrets = append(l.allSecrets, h)
			}
		}
	}
	if v := f["body"]; v != nil {
		p := join(path, "body")
		if body, ok := l.value(v, p); ok {
			if t, err := render.Compile(body); err != nil {
				l.templateErrors(p, err)
			} else {
				r.Body, r.BodyTemplate = body, t
			}
		}
	}
	return r, secrets
}

// cycles reports every dependency cycle of a feature, as "a -> b -> a" where each step needs the next.
func (l *loader) cycles(feat *Feature, path string, index map[string]int) {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var visit func(s *Step)
	visit = func(s *Step) {
		color[s.Name] = grey
		stack = append(stack, s.Name)
		for _, dep := range s.Needs {
			switch color[dep] {
			case grey:
				start := slices.Index(stack, dep)
				cycle := append(slices.Clone(stack[start:]), dep)
				l.errorf(fmt.Sprintf("%s[%d].needs", path, index[s.Name]), "dependency cycle: %s (each step needs the next)", strings.Join(cycle, " -> "))
			case white:
				if d, ok := feat.Step(dep); ok {
					visit(d)
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[s.Name] = black
	}
	for _, s := range feat.Steps {
		if color[s.Name] == white {
			visit(s)
		}
	}
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

// secretList drops short values and duplicates and sorts longest first, the order Redact needs.
func secretList(in []string) []string {
	var out []string
	for _, s := range in {
		if len(s) >= minSecretLen && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redact replaces every secret in text with "[REDACTED]", longest secrets first.
func redact(secrets []string, text string) string {
	if len(secrets) == 0 || text == "" {
		return text
	}
	sorted := slices.Clone(secrets)
	sort.SliceStable(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	pairs := make([]string, 0, 2*len(sorted))
	for _, s := range sorted {
		if s != "" {
			pairs = append(pairs, s, "[REDACTED]")
		}
	}
	if len(pairs) == 0 {
		return text
	}
	// strings.Replacer tries the old strings in argument order at each position: longest first wins.
	return strings.NewReplacer(pairs...).Replace(text)
}

package registry

// This file decodes a service's budgets (rate_limit and rate_limits) and the limit per key
// (concurrency_key with max_concurrency_per_key), on a service or a step.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cao-run/cao/pkg/render"
)

// Budget kinds.
const (
	BudgetRequests = "requests" // every call counts 1
	BudgetUnits    = "units"    // every call counts what it costs (tokens, say)
)

// MaxBudgetUnits bounds a units budget: the limiter counts in Lua numbers (doubles), exact up to 2^53.
const MaxBudgetUnits = 1 << 50

// Budget is one fleet-wide budget of a service, an entry of rate_limits (or its rate_limit): at
// most Limit requests, or Limit units of cost, leave per sliding window of Per.
type Budget struct {
	Kind  string // BudgetRequests or BudgetUnits
	Limit int64  // requests or units per Per
	Per   time.Duration
	// Reserve is what a call takes from a units budget before it leaves. When it is not set, a call
	// takes Cost when Cost is a constant, and otherwise nothing (it then needs one free unit).
	Reserve Amount
	// Cost is what a call of a units budget cost, read from its answer (.response); it replaces the
	// reservation. When it is not set, the reservation is the cost.
	Cost Amount
	// ID names the budget's fleet-wide state among its service's budgets. It does not depend on the
	// limit or on the order of the units budgets, so an edited registry keeps counting in the same
	// window. The service's first requests budget has the empty ID: it keeps the state of the former
	// single rate_limit, which older workers share during a rolling upgrade.
	ID string
	// Path is where the file declares the budget, e.g. "services.llm.rate_limits[1]", for logs.
	Path string
}

// Amount is a number of units: a constant, or a template rendered for each call.
type Amount struct {
	Set      bool             // false when the file does not set it
	Const    int64            // the constant, when Template is nil
	Template *render.Template // renders to a number (or a string holding one); nil for a constant
	Text     string           // the template as written, or the constant in decimal
}

// IsConst reports whether the amount is set and constant.
func (a Amount) IsConst() bool { return a.Set && a.Template == nil }

// KeyLimit caps the calls in flight, fleet-wide, per value of a template: concurrency_key with
// max_concurrency_per_key (think: one end customer's own API key at the provider).
type KeyLimit struct {
	Template *render.Template // renders the key value, a string; an empty one means no key limit
	Text     string           // the template as written
	Max      int              // calls in flight per key value, at least 1
	Path     string           // where the file declares the key, for errors and logs
}

// Template data a budget's or key's templates may use (besides the usual .input, .steps, .job,
// .step): the rendered request, and the answer for a cost.
var (
	keyRoots     = []string{"input", "steps", "job", "step"}
	reserveRoots = []string{"input", "steps", "job", "step", "request"}
	costRoots    = []string{"input", "steps", "job", "step", "request", "response"}
)

var budgetFields = []string{"requests", "units", "per", "cost", "reserve"}

// rateLimits reads rate_limit (one requests budget) and rate_limits (a list of budgets) of a
// service: rate_limit comes first, and a budget listed twice is an error.
func (l *loader) rateLimits(f map[string]*yaml.Node, path string) []Budget {
	var out []Budget
	if v := f["rate_limit"]; v != nil {
		p := join(path, "rate_limit")
		if rl := l.rateLimit(v, p); rl != nil {
			out = append(out, Budget{Kind: BudgetRequests, Limit: int64(rl.Requests), Per: rl.Per, Path: p})
		}
	}
	if v := f["rate_limits"]; v != nil {
		p := join(path, "rate_limits")
		if v.Kind != yaml.SequenceNode {
			l.errorf(p, "expected a list of budgets such as {requests: 500, per: 1m} or {units: 90000, per: 1m, cost: ...}, got %s", l.show(v))
		} else {
			for i, c := range v.Content {
				ep := fmt.Sprintf("%s[%d]", p, i)
				b, ok := l.budget(resolve(c), ep)
				if !ok {
					continue
				}
				if j := slices.IndexFunc(out, func(o Budget) bool { return o.same(b) }); j >= 0 {
					l.errorf(ep, "duplicate budget: same kind, window and amounts as %s (one budget per kind and window; for two token counts use different cost templates)", out[j].Path)
					continue
				}
				out = append(out, b)
			}
		}
	}
	first := true
	for i := range out {
		b := &out[i]
		if b.Kind == BudgetRequests && first {
			first = false // ID "": the state of the former single rate_limit
			continue
		}
		b.ID = b.identity()
	}
	return out
}

// budget reads one entry of rate_limits.
func (l *loader) budget(n *yaml.Node, path string) (Budget, bool) {
	f := l.fields(n, path, budgetFields)
	if f == nil {
		return Budget{}, false
	}
	b := Budget{Path: path}
	ok := true
	req, units := f["requests"], f["units"]
	switch {
	case req != nil && units != nil:
		l.errorf(path, "set either requests (calls per window) or units (cost units per window), not both")
		return Budget{}, false
	case req == nil && units == nil:
		l.errorf(path, "required: requests (calls per window) or units (cost units per window)")
		return Budget{}, false
	case req != nil:
		b.Kind = BudgetRequests
		p := join(path, "requests")
		if i, iok := l.integer(req, p); !iok {
			ok = false
		} else if i < 1 || i > math.MaxInt32 {
			l.errorf(p, "must be a positive integer, got %d", i)
			ok = false
		} else {
			b.Limit = i
		}
		for _, k := range []string{"cost", "reserve"} {
			if f[k] != nil {
				l.errorf(join(path, k), "only for a units budget (a call always costs one request)")
				ok = false
			}
		}
	default:
		b.Kind = BudgetUnits
		p := join(path, "units")
		if i, iok := l.integer(units, p); !iok {
			ok = false
		} else if i < 1 || i > MaxBudgetUnits {
			l.errorf(p, "must be between 1 and %d, got %d", int64(MaxBudgetUnits), i)
			ok = false
		} else {
			b.Limit = i
		}
	}
	if v := f["per"]; v == nil {
		l.errorf(join(path, "per"), "required (a duration such as \"1s\" or \"1m\")")
		ok = false
	} else if d, dok := l.duration(v, join(path, "per"), true); !dok {
		ok = false
	} else if d < time.Millisecond {
		l.errorf(join(path, "per"), "must be at least 1ms, got %s", l.show(v))
		ok = false
	} else {
		b.Per = d
	}
	if b.Kind == BudgetUnits {
		if v := f["reserve"]; v != nil {
			var rok bool
			b.Reserve, rok = l.amount(v, join(path, "reserve"), reserveRoots, "{{ .request.body.max_tokens }}")
			ok = ok && rok
		}
		if v := f["cost"]; v != nil {
			var cok bool
			b.Cost, cok = l.amount(v, join(path, "cost"), costRoots, "{{ .response.usage.total_tokens }}")
			ok = ok && cok
		}
		if ok && !b.Reserve.Set && !b.Cost.Set {
			l.errorf(path, "a units budget needs cost (what a call cost, from its answer: .response) or reserve (what a call takes before it leaves), or both")
			ok = false
		}
		if ok && b.Limit > 0 {
			for _, a := range []struct {
				key string
				amt Amount
			}{{"reserve", b.Reserve}, {"cost", b.Cost}} {
				if a.amt.IsConst() && a.amt.Const > b.Limit {
					l.errorf(join(path, a.key), "%d is more than the budget's %d units: no call could ever leave", a.amt.Const, b.Limit)
					ok = false
				}
			}
		}
	}
	return b, ok
}

// amount reads a non-negative integer or a template over the data named by roots.
func (l *loader) amount(n *yaml.Node, path string, roots []string, example string) (Amount, bool) {
	if l.bad[n] {
		return Amount{}, false
	}
	if n.Kind == yaml.ScalarNode && l.typed(n) == "!!int" {
		i, ok := l.integer(n, path)
		if !ok {
			return Amount{}, false
		}
		if i < 0 || i > MaxBudgetUnits {
			l.errorf(path, "must be between 0 and %d, got %d", int64(MaxBudgetUnits), i)
			return Amount{}, false
		}
		return Amount{Set: true, Const: i, Text: strconv.FormatInt(i, 10)}, true
	}
	if n.Kind == yaml.ScalarNode && l.typed(n) == "!!str" && strings.Contains(n.Value, "{{") {
		t, ok := l.dataTemplate(n, path, roots, false)
		if !ok {
			return Amount{}, false
		}
		return Amount{Set: true, Template: t, Text: n.Value}, true
	}
	l.errorf(path, "expected a non-negative integer or a template such as %q, got %s", example, l.show(n))
	return Amount{}, false
}

// dataTemplate compiles a template string that may use only the template data named by roots
// (asString: it renders to a string, as a key does).
func (l *loader) dataTemplate(n *yaml.Node, path string, roots []string, asString bool) (*render.Template, bool) {
	compile := render.Compile
	if asString {
		compile = func(v any) (*render.Template, error) { return render.CompileString(v.(string)) }
	}
	t, err := compile(n.Value)
	if err != nil {
		l.templateErrors(path, err)
		return nil, false
	}
	used, err := templateRoots(n.Value)
	if err != nil {
		l.templateErrors(path, err)
		return nil, false
	}
	for _, r := range used {
		if !slices.Contains(roots, r) {
			l.errorf(path, "unknown template data .%s (expected %s)", r, dotted(roots))
			return nil, false
		}
	}
	return t, true
}

func dotted(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "." + n
	}
	return strings.Join(out, ", ")
}

// keyLimit reads a service's concurrency_key and max_concurrency_per_key: both or neither.
func (l *loader) keyLimit(f map[string]*yaml.Node, path string) *KeyLimit {
	key, maxN := f["concurrency_key"], f["max_concurrency_per_key"]
	if key == nil && maxN == nil {
		return nil
	}
	kl := &KeyLimit{}
	var ok bool
	if key != nil {
		ok = l.keyTemplate(key, join(path, "concurrency_key"), kl)
	} else {
		l.errorf(join(path, "max_concurrency_per_key"), "requires concurrency_key (the template whose value the calls in flight are counted by, e.g. \"{{ .input.customer_id }}\")")
	}
	if maxN != nil {
		ok = l.keyMax(maxN, join(path, "max_concurrency_per_key"), kl) && ok
	} else {
		l.errorf(join(path, "concurrency_key"), "requires max_concurrency_per_key (the calls in flight allowed per key value)")
		ok = false
	}
	if !ok {
		return nil
	}
	return kl
}

// stepKeyLimit returns a step's effective limit per key: its own concurrency_key and
// max_concurrency_per_key, each over its service's.
func (l *loader) stepKeyLimit(f map[string]*yaml.Node, path string, svc *Service) *KeyLimit {
	key, maxN := f["concurrency_key"], f["max_concurrency_per_key"]
	var base *KeyLimit
	if svc != nil {
		base = svc.KeyLimit
	}
	if key == nil && maxN == nil {
		return base
	}
	kl := &KeyLimit{}
	if base != nil {
		*kl = *base
	}
	ok := true
	if key != nil {
		ok = l.keyTemplate(key, join(path, "concurrency_key"), kl)
	} else if base == nil {
		l.errorf(join(path, "max_concurrency_per_key"), "requires concurrency_key (on the step or its service)")
		ok = false
	}
	if maxN != nil {
		ok = l.keyMax(maxN, join(path, "max_concurrency_per_key"), kl) && ok
	} else if base == nil {
		l.errorf(join(path, "concurrency_key"), "requires max_concurrency_per_key (on the step or its service)")
		ok = false
	}
	if !ok {
		return base
	}
	return kl
}

func (l *loader) keyTemplate(n *yaml.Node, path string, kl *KeyLimit) bool {
	s, ok := l.str(n, path)
	if !ok {
		return false
	}
	if !strings.Contains(s, "{{") {
		l.errorf(path, "expected a template such as \"{{ .input.customer_id }}\" (a constant key would be one more max_concurrency), got %s", l.show(n))
		return false
	}
	t, ok := l.dataTemplate(n, path, keyRoots, true)
	if !ok {
		return false
	}
	kl.Template, kl.Text, kl.Path = t, s, path
	return true
}

func (l *loader) keyMax(n *yaml.Node, path string, kl *KeyLimit) bool {
	i, ok := l.integer(n, path)
	if !ok {
		return false
	}
	if i < 1 || i > math.MaxInt32 {
		l.errorf(path, "must be a positive integer, got %d", i)
		return false
	}
	kl.Max = int(i)
	return true
}

// Label names the budget for people: "500 requests per 1m0s", "90000 units per 1m0s".
func (b Budget) Label() string {
	return fmt.Sprintf("%d %s per %s", b.Limit, b.Kind, b.Per)
}

// same reports whether two budgets count the same thing over the same window.
func (b Budget) same(o Budget) bool {
	return b.Kind == o.Kind && b.Per == o.Per && b.Reserve.Text == o.Reserve.Text && b.Cost.Text == o.Cost.Text
}

// identity is a budget's ID: its kind and window, and for a units budget a digest of its amounts
// (two units budgets of one window count different things).
func (b Budget) identity() string {
	id := fmt.Sprintf("%s-%d", b.Kind, b.Per.Milliseconds())
	if b.Kind == BudgetUnits {
		sum := sha256.Sum256([]byte(b.Cost.Text + "\x00" + b.Reserve.Text))
		id += "-" + hex.EncodeToString(sum[:4])
	}
	return id
}

// budgetTemplates returns the template strings of a service's budgets and of a step's limit per
// key, for the check that .steps names only steps upstream of the steps that use them.
func budgetTemplates(svc *Service) []templateField {
	var out []templateField
	if svc == nil {
		return nil
	}
	for _, b := range svc.RateLimits {
		if b.Reserve.Template != nil {
			out = append(out, templateField{path: join(b.Path, "reserve"), text: b.Reserve.Text})
		}
		if b.Cost.Template != nil {
			out = append(out, templateField{path: join(b.Path, "cost"), text: b.Cost.Text})
		}
	}
	return out
}

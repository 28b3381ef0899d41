package caller

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Budget is what one answer of a service said about its rate-limit budgets (registry key
// budget_headers). The runner turns a spent budget into a fleet-wide hold on the service.
type Budget struct {
	// Limits are the budgets the answer described.
	Limits []BudgetLimit
	// Hold is how long every call to the service should wait: the latest reset among the budgets
	// the answer says are spent (remaining 0), at most MaxRetryAfter; 0 when none is spent or a
	// spent one gave no reset.
	Hold time.Duration
	// RetryAfter is the Retry-After of a 429 or 503 answer (at most MaxRetryAfter); 0 otherwise.
	RetryAfter time.Duration
}

// BudgetLimit is one budget as the provider reported it.
type BudgetLimit struct {
	// Name is "requests" or "tokens" (x-ratelimit-*-requests, -tokens), the policy name of an IETF
	// RateLimit item ("default"), or "" for a budget the headers do not name.
	Name string
	// Limit is the budget's size; -1 when the answer did not say.
	Limit int64
	// Remaining is how many units are left.
	Remaining int64
	// Reset is how long until the budget refills; -1 when the answer did not say.
	Reset time.Duration
}

// Spent reports whether the provider said the budget has nothing left.
func (l BudgetLimit) Spent() bool { return l.Remaining <= 0 }

// budgetPairs are the remaining/reset/limit header triples of the budgets CAO follows. The OpenAI
// form (also Groq, Azure OpenAI, most OpenAI-compatible servers) names requests and tokens; the
// others describe one unnamed budget: the widespread X-RateLimit-* and the IETF drafts up to -06.
var budgetPairs = []struct{ name, remaining, reset, limit string }{
	{"requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests", "X-Ratelimit-Limit-Requests"},
	{"tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens", "X-Ratelimit-Limit-Tokens"},
	{"", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "X-Ratelimit-Limit"},
	{"", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset", "X-Rate-Limit-Limit"},
	{"", "Ratelimit-Remaining", "Ratelimit-Reset", "Ratelimit-Limit"},
}

// ParseBudget reads the rate-limit budgets an answer reports, or returns nil when it reports none:
//
//   - x-ratelimit-remaining-requests / -tokens with x-ratelimit-reset-requests / -tokens, resets as
//     Go durations ("6m0s", "1.5s", "20ms") or seconds ("2", "0.5");
//   - X-RateLimit-Remaining / X-RateLimit-Reset (and X-Rate-Limit-*, RateLimit-Remaining /
//     RateLimit-Reset of the IETF drafts up to -06), resets in seconds, a unix time or an HTTP date;
//   - the IETF draft's RateLimit field, as a list of policies with remaining r and reset t
//     (`"default";r=0;t=5`, drafts -08 on; a policy without t resets within the window w its
//     RateLimit-Policy gives, `"default";q=100;w=60`), or as the dictionary of draft -07
//     (`limit=100, remaining=0, reset=5`).
func ParseBudget(h http.Header, now time.Time) *Budget {
	var b Budget
	for _, p := range budgetPairs {
		rem, ok := parseCount(h.Get(p.remaining))
		if !ok {
			continue
		}
		l := BudgetLimit{Name: p.name, Limit: -1, Remaining: rem, Reset: -1}
		if n, ok := parseCount(h.Get(p.limit)); ok {
			l.Limit = n
		}
		if v := strings.TrimSpace(h.Get(p.reset)); v != "" {
			if d, ok := parseReset(v, now); ok {
				l.Reset = max(d, 0)
			}
		}
		b.Limits = append(b.Limits, l)
	}
	b.Limits = append(b.Limits, structuredBudgets(h)...)
	if len(b.Limits) == 0 {
		return nil
	}
	for _, l := range b.Limits {
		if l.Spent() && l.Reset > 0 {
			b.Hold = max(b.Hold, l.Reset)
		}
	}
	b.Hold = capDelay(b.Hold)
	return &b
}

// answerBudget is what an answer says about the service's budgets: its budget headers and, for a
// 429 or 503, its Retry-After. nil when it says nothing.
func answerBudget(ans answer, now time.Time) *Budget {
	b := ParseBudget(ans.header, now)
	if ans.status != http.StatusTooManyRequests && ans.status != http.StatusServiceUnavailable {
		return b
	}
	if d := retryAfter(ans.header, now, false); d > 0 {
		if b == nil {
			b = &Budget{}
		}
		b.RetryAfter = d
	}
	return b
}

// parseCount reads a non-negative-or-negative integer count ("0", "42", "-1"); some servers send
// decimals ("12.0"), which are truncated.
func parseCount(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return n, true
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) && math.Abs(f) < 1e18 {
		return int64(f), true
	}
	return 0, false
}

// structuredBudgets reads the IETF RateLimit field (with RateLimit-Policy for windows).
func structuredBudgets(h http.Header) []BudgetLimit {
	raw := strings.Join(h.Values("Ratelimit"), ", ")
	if strings.TrimSpace(raw) == "" {
		return nil
	}
	members := parseStructured(raw)
	// Draft -07: one dictionary, limit=, remaining=, reset=.
	dict := map[string]string{}
	for _, m := range members {
		if m.key != "" {
			dict[strings.ToLower(m.key)] = m.value
		}
	}
	if rem, ok := dict["remaining"]; ok {
		n, ok := parseCount(rem)
		if !ok {
			return nil
		}
		l := BudgetLimit{Limit: -1, Remaining: n, Reset: -1}
		if v, ok := parseCount(dict["limit"]); ok {
			l.Limit = v
		}
		if d, ok := sfSeconds(dict["reset"]); ok {
			l.Reset = d
		}
		return []BudgetLimit{l}
	}
	// Drafts -08 on: a list of policies, each with its remaining quota units r and reset t.
	policies := map[string]sfMember{}
	for _, m := range parseStructured(strings.Join(h.Values("Ratelimit-Policy"), ", ")) {
		if m.key == "" {
			policies[m.value] = m
		}
	}
	var out []BudgetLimit
	for _, m := range members {
		if m.key != "" {
			continue
		}
		n, ok := parseCount(m.params["r"])
		if !ok {
			continue
		}
		l := BudgetLimit{Name: m.value, Limit: -1, Remaining: n, Reset: -1}
		if d, ok := sfSeconds(m.params["t"]); ok {
			l.Reset = d
		}
		if p, ok := policies[m.value]; ok {
			if q, ok := parseCount(p.params["q"]); ok {
				l.Limit = q
			}
			if l.Reset < 0 {
				// Without t, the quota comes back within one window at the latest.
				if d, ok := sfSeconds(p.params["w"]); ok {
					l.Reset = d
				}
			}
		}
		out = append(out, l)
	}
	return out
}

// sfSeconds reads a structured-field integer or decimal number of seconds.
func sfSeconds(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
		return 0, false
	}
	return seconds(f), true
}

// sfMember is one member of a structured field (RFC 8941), read leniently: a dictionary member
// key=value, or a list item value, each with its parameters. String values are unquoted.
type sfMember struct {
	key    string
	value  string
	params map[string]string
}

// parseStructured splits a structured list or dictionary into members. It is lenient: it reads what
// providers send rather than validating RFC 8941 (a member it cannot read is kept with what it got).
func parseStructured(s string) []sfMember {
	var out []sfMember
	for _, raw := range splitTop(s, ',') {
		parts := splitTop(raw, ';')
		if len(parts) == 0 || strings.TrimSpace(parts[0]) == "" {
			continue
		}
		m := sfMember{params: map[string]string{}}
		head := strings.TrimSpace(parts[0])
		if k, v, ok := cutTop(head, '='); ok {
			m.key, m.value = strings.TrimSpace(k), unquote(strings.TrimSpace(v))
		} else {
			m.value = unquote(head)
		}
		for _, p := range parts[1:] {
			k, v, ok := cutTop(strings.TrimSpace(p), '=')
			if !ok {
				v = "?1" // a bare parameter is boolean true
			}
			m.params[strings.ToLower(strings.TrimSpace(k))] = unquote(strings.TrimSpace(v))
		}
		out = append(out, m)
	}
	return out
}

// splitTop splits s at sep outside double quotes and parentheses.
func splitTop(s string, sep byte) []string {
	var out []string
	start, depth, quoted := 0, 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == sep && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// cutTop cuts s at the first sep outside double quotes.
func cutTop(s string, sep byte) (string, string, bool) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// unquote removes the quotes and escapes of a structured-field string; other values are returned as is.
func unquote(s string) string {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return s
	}
	var b strings.Builder
	for i := 1; i < len(s)-1; i++ {
		if s[i] == '\\' && i+1 < len(s)-1 {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

package schema

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// The validator compares numbers exactly, as math/big.Rat values parsed from their decimal text:
// json.Number as written, a float64 as the shortest decimal that rounds to it (a schema's
// "minimum: 0.1", a float64 once decoded from YAML, is 0.1, as an input's 0.1 is). But building the
// Rat of 1e999999 takes 24ms, and beyond an exponent of a million big.Rat gives up (the validator
// then dereferences nil). So before validating, prepare replaces each number of the input whose
// exponent or length is out of proportion with the schema by a stand-in of modest size that every
// keyword judges the same way: on the same side of every number the schema holds, equal to none of
// them, an integer exactly when the original is, a multiple of each multipleOf exactly when the
// original is, and equal to another stand-in exactly when the originals are equal (uniqueItems).
// Messages never quote the input's numbers, so nobody sees a stand-in.

// decimal is a number, exactly: ±0.DIGITS × 10^exp, with neither leading nor trailing zeros in
// digits; zero has no digits. Any JSON number converts to one in time linear in its length.
type decimal struct {
	neg    bool
	digits string
	exp    int64
}

// maxExponent bounds the exponents of decimals: a JSON number whose exponent has more than 17 digits
// is taken as if it were 1e±10^17 (exactExponent gives its true exponent when that matters).
const maxExponent = 100_000_000_000_000_000

// parseDecimal parses the syntax of JSON numbers (and of strconv's output, which adds "+" to
// exponents).
func parseDecimal(s string) (decimal, bool) {
	var d decimal
	i := 0
	if i < len(s) && s[i] == '-' {
		d.neg = true
		i++
	}
	digits := func() string {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return s[start:i]
	}
	intPart := digits()
	frac := ""
	if i < len(s) && s[i] == '.' {
		i++
		if frac = digits(); frac == "" {
			return decimal{}, false
		}
	}
	if intPart == "" {
		return decimal{}, false
	}
	var exp int64
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		negExp := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			negExp = s[i] == '-'
			i++
		}
		e := digits()
		if e == "" {
			return decimal{}, false
		}
		for _, c := range e {
			exp = min(exp*10+int64(c-'0'), maxExponent)
		}
		if negExp {
			exp = -exp
		}
	}
	if i != len(s) {
		return decimal{}, false
	}
	all := strings.TrimLeft(intPart+frac, "0")
	lead := int64(len(intPart) + len(frac) - len(all)) // leading zeros, before or after the point
	d.digits = strings.TrimRight(all, "0")
	if d.digits == "" {
		return decimal{}, true // zero, and -0 is 0
	}
	d.exp = int64(len(intPart)) - lead + exp
	return d, true
}

// exactExponent returns the exponent of s, a valid number whose decimal is d, as a string: d.exp
// unless the exponent written in s was cut at maxExponent.
func exactExponent(s string, d decimal) string {
	if d.exp > -maxExponent/2 && d.exp < maxExponent/2 {
		return strconv.FormatInt(d.exp, 10)
	}
	mant, written, _ := strings.Cut(strings.ToLower(s), "e")
	e, _ := new(big.Int).SetString(strings.TrimPrefix(written, "+"), 10)
	intPart, frac, _ := strings.Cut(strings.TrimPrefix(mant, "-"), ".")
	lead := len(intPart) + len(frac) - len(strings.TrimLeft(intPart+frac, "0"))
	return e.Add(e, big.NewInt(int64(len(intPart)-lead))).String()
}

// toDecimal converts a numeric Go value (json.Number, float64, Go integers) to a decimal; a float is
// taken as the shortest decimal that rounds to it.
func toDecimal(v any) (decimal, bool) {
	s, ok := numberText(v)
	if !ok {
		return decimal{}, false
	}
	return parseDecimal(s)
}

// numberText returns the decimal text of a numeric Go value; ok is false for anything else, and for
// NaN and infinities.
func numberText(v any) (s string, ok bool) {
	switch x := v.(type) {
	case json.Number:
		return string(x), true
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "", false
		}
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case float32:
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return "", false
		}
		return strconv.FormatFloat(float64(x), 'g', -1, 32), true
	case int:
		return strconv.FormatInt(int64(x), 10), true
	case int8:
		return strconv.FormatInt(int64(x), 10), true
	case int16:
		return strconv.FormatInt(int64(x), 10), true
	case int32:
		return strconv.FormatInt(int64(x), 10), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case uint:
		return strconv.FormatUint(uint64(x), 10), true
	case uint8:
		return strconv.FormatUint(uint64(x), 10), true
	case uint16:
		return strconv.FormatUint(uint64(x), 10), true
	case uint32:
		return strconv.FormatUint(uint64(x), 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	}
	return "", false
}

func (d decimal) sign() int {
	switch {
	case d.digits == "":
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// cmp returns -1, 0 or +1 as d is less than, equal to or greater than e.
func (d decimal) cmp(e decimal) int {
	ds, es := d.sign(), e.sign()
	if ds != es || ds == 0 {
		return cmp.Compare(ds, es)
	}
	c := cmp.Compare(d.exp, e.exp)
	if c == 0 {
		c = strings.Compare(d.digits, e.digits) // same magnitude: digit by digit
	}
	return c * ds
}

func (d decimal) isInt() bool { return d.exp >= int64(len(d.digits)) }

// String writes d as JSON would: plainly from 1e-6 to 1e21, in scientific notation beyond.
func (d decimal) String() string {
	if d.digits == "" {
		return "0"
	}
	sign := ""
	if d.neg {
		sign = "-"
	}
	n := int64(len(d.digits))
	switch {
	case d.exp >= n && d.exp <= 21:
		return sign + d.digits + strings.Repeat("0", int(d.exp-n))
	case d.exp > 0 && d.exp < n:
		return sign + d.digits[:d.exp] + "." + d.digits[d.exp:]
	case d.exp <= 0 && d.exp > -6:
		return sign + "0." + strings.Repeat("0", int(-d.exp)) + d.digits
	}
	m := d.digits[:1]
	if n > 1 {
		m += "." + d.digits[1:]
	}
	return fmt.Sprintf("%s%se%+d", sign, m, d.exp-1)
}

// text writes d in a form both JSON and big.Rat read: DIGITS e EXP.
func (d decimal) text() string {
	if d.digits == "" {
		return "0"
	}
	sign := ""
	if d.neg {
		sign = "-"
	}
	return sign + d.digits + "e" + strconv.FormatInt(d.exp-int64(len(d.digits)), 10)
}

// ratText writes a number the validator holds (a bound of the schema, parsed from its decimal text)
// as JSON would.
func ratText(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	// Its denominator is 2^a × 5^b: max(a, b) decimals write it exactly.
	den := new(big.Int).Set(r.Denom())
	a := den.TrailingZeroBits()
	den.Rsh(den, a)
	five, rem := big.NewInt(5), new(big.Int)
	var b uint
	for den.Cmp(big.NewInt(1)) > 0 {
		q, m := new(big.Int).QuoRem(den, five, rem)
		if m.Sign() != 0 {
			return r.RatString() // not a decimal: cannot come from a schema, but say something true
		}
		den, b = q, b+1
	}
	d, _ := parseDecimal(r.FloatString(int(max(a, b))))
	return d.String()
}

// numberLimits says, for one schema, which numbers of an input the validator takes as they are.
type numberLimits struct {
	// bound: a number whose exponent lies in [-bound, bound] keeps its exponent. Every number of the
	// schema has an exponent strictly within, and bound exceeds the powers of 2 and 5 of each
	// multipleOf value's numerator and denominator (see standIn).
	bound int64
	// digits: a non-integer with more digits than this may be shortened; every number of the schema
	// has at most digits-2.
	digits int
	// multipleOf: the schema has a multipleOf, whose answer depends on every digit: digits are kept.
	multipleOf bool
	// uniqueItems: the schema compares items of the input with one another: stand-ins of different
	// numbers must differ.
	uniqueItems bool
}

// Bounds of the numbers a schema may hold (keyword values, const and enum): far beyond float64's,
// which is what a registry file holds.
const (
	maxSchemaDigits   = 1000
	maxSchemaExponent = 1000
)

// noteNumber widens the limits for one number d of the schema; mult is set for multipleOf values.
func (l *numberLimits) noteNumber(d decimal, mult bool) {
	n, e := int64(len(d.digits)), d.exp
	if e < 0 {
		e = -e
	}
	l.bound = max(l.bound, e+1)
	l.digits = max(l.digits, int(n)+2)
	if mult {
		// multipleOf m = p/q (lowest terms): p and q are below 10^(n+|e|), so their powers of 2 and 5
		// are below 4(n+|e|).
		l.bound = max(l.bound, 4*(n+e)+8)
		l.multipleOf = true
	}
}

// defaultLimits leaves every float64 (exponents -323 to 309, 17 digits) as it is.
func defaultLimits() numberLimits { return numberLimits{bound: 330, digits: 19} }

// prepared holds the state of one input's preparation.
type prepared struct {
	lim   numberLimits
	ranks map[string]int // stand-ins' ranks, by original number (uniqueItems only)
	bad   bool           // a value is not JSON (a Go type, NaN, a malformed json.Number)
}

// prepare returns v with every number out of proportion replaced by its stand-in, and whether it
// replaced any (v itself is never modified); p.bad is set when v holds something that is not JSON,
// which badValues then locates.
func (p *prepared) prepare(v any) (any, bool) {
	switch x := v.(type) {
	case nil, bool, string:
		return v, false
	case json.Number:
		s := string(x)
		if len(s) <= p.lim.digits && !strings.ContainsAny(s, "eE") {
			// Few digits, no exponent: the common case, checked in time linear in its few digits.
			if _, ok := parseDecimal(s); !ok {
				p.bad = true
			}
			return v, false
		}
		d, ok := parseDecimal(s)
		if !ok {
			p.bad = true
			return v, false
		}
		if stand, changed := p.standIn(s, d); changed {
			return json.Number(stand), true
		}
		return v, false
	case map[string]any:
		var out map[string]any
		for k, e := range x {
			if n, changed := p.prepare(e); changed {
				if out == nil {
					out = make(map[string]any, len(x))
					for k2, e2 := range x {
						out[k2] = e2
					}
				}
				out[k] = n
			}
		}
		if out != nil {
			return out, true
		}
		return v, false
	case []any:
		var out []any
		for i, e := range x {
			if n, changed := p.prepare(e); changed {
				if out == nil {
					out = append([]any(nil), x...)
				}
				out[i] = n
			}
		}
		if out != nil {
			return out, true
		}
		return v, false
	}
	if _, ok := numberText(v); !ok {
		p.bad = true // a Go value that is not JSON, NaN or an infinity
	}
	return v, false // Go's floats and integers: within float64's range, or exact integers
}

// standIn returns the stand-in of the number s (whose decimal is d), and whether it needs one.
//
// The schema's numbers have exponents in [-bound+1, bound-1] and at most digits-2 digits. Cases:
//   - huge (exp > bound): a stand-in with an exponent above bound, integer exactly when s is.
//     Under multipleOf, an integer keeps its digits D and becomes D × 10^k with k ≥ bound: for
//     m = p/q, D × 10^k / m is an integer iff p divides D × 10^k × q, which for k at least p's
//     powers of 2 and 5 depends on D only. A huge non-integer under multipleOf has as many digits
//     as its exponent says: it is left alone (its length is the input's).
//   - tiny (exp < -bound): a stand-in below 10^-bound, not an integer; under multipleOf it keeps
//     its digits D and gets an exponent below -bound: D / 10^K is a multiple of p/q iff p × 10^K
//     divides D × q, impossible for K beyond q's powers of 2 and 5 (D is not a multiple of 10).
//   - long (more digits than digits, exponent within bound, not an integer): its first
//     max(digits, exp+1) digits and a marker, strictly between the same two neighbours of the
//     schema's numbers; left alone under multipleOf.
//
// Each stand-in ends in a marker "1" + rank + "1", where rank numbers the distinct originals (0
// without uniqueItems), so that no stand-in equals an untouched number, nor another stand-in
// unless their originals are equal.
func (p *prepared) standIn(s string, d decimal) (string, bool) {
	n := int64(len(d.digits))
	bound := p.lim.bound
	switch {
	case d.digits == "":
		return "", false
	case d.exp > bound:
		if p.lim.multipleOf {
			if !d.isInt() {
				return "", false
			}
			return decimal{neg: d.neg, digits: d.digits, exp: bound + 1 + n + int64(p.rank(s, d))}.text(), true
		}
		mark := p.marker(s, d)
		if d.isInt() {
			return decimal{neg: d.neg, digits: mark, exp: bound + 1 + int64(len(mark))}.text(), true
		}
		return decimal{neg: d.neg, digits: "1" + strings.Repeat("0", int(bound)+1) + mark, exp: bound + 1}.text(), true
	case d.exp < -bound:
		if p.lim.multipleOf {
			return decimal{neg: d.neg, digits: d.digits, exp: -bound - 1 - int64(p.rank(s, d))}.text(), true
		}
		return decimal{neg: d.neg, digits: p.marker(s, d), exp: -bound - 1}.text(), true
	case n > int64(p.lim.digits) && !d.isInt() && !p.lim.multipleOf:
		keep := max(int64(p.lim.digits), d.exp+1)
		return decimal{neg: d.neg, digits: d.digits[:keep] + p.marker(s, d), exp: d.exp}.text(), true
	}
	return "", false
}

func (p *prepared) marker(s string, d decimal) string {
	return "1" + strconv.Itoa(p.rank(s, d)) + "1"
}

// rank numbers the distinct numbers that get a stand-in, when the schema compares items; else 0.
func (p *prepared) rank(s string, d decimal) int {
	if !p.lim.uniqueItems {
		return 0
	}
	key := d.digits + "e" + exactExponent(s, d)
	if d.neg {
		key = "-" + key
	}
	if p.ranks == nil {
		p.ranks = map[string]int{}
	}
	r, ok := p.ranks[key]
	if !ok {
		r = len(p.ranks)
		p.ranks[key] = r
	}
	return r
}

// badValues lists the values of v that are not JSON, each at its path.
func badValues(path string, v any, errs *[]FieldError) {
	switch x := v.(type) {
	case nil, bool, string:
	case json.Number:
		if _, ok := parseDecimal(string(x)); !ok {
			*errs = append(*errs, FieldError{Field: fieldOf(path), Message: fmt.Sprintf("is not a valid number (%.20q)", string(x))})
		}
	case map[string]any:
		for k, e := range x {
			badValues(join(path, k), e, errs)
		}
	case []any:
		for i, e := range x {
			badValues(fmt.Sprintf("%s[%d]", path, i), e, errs)
		}
	default:
		if _, ok := numberText(v); !ok {
			*errs = append(*errs, FieldError{Field: fieldOf(path), Message: fmt.Sprintf("is not a JSON value (%T)", v)})
		}
	}
}

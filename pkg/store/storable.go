package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxDecimalExponent bounds the numbers every backend stores: Postgres' numeric (behind jsonb)
// holds up to 131,072 digits before the decimal point and maxScale after it.
const maxDecimalExponent = 100_000

// maxScale is how many digits numeric holds after the decimal point, counting the zeros written
// after it (0.10 has two) and those a negative exponent adds (1e-3 has three): 1e-16384 and
// 0.1e-16383 are out of range.
const maxScale = 16_383

// maxExponent is where Postgres stops reading an exponent, even that of a zero (0e1073741823).
const maxExponent = 1<<30 - 1

// UnstorableError describes a JSON value no backend can store as it is (Postgres' jsonb and text are the
// strictest): invalid UTF-8, a NUL character in a string or key, half of a UTF-16 surrogate pair
// escaped alone ("\ud800"), or a number out of numeric's range.
type UnstorableError struct {
	Path   string // where in the value, "$" for the whole of it, then .key and [index]
	Reason string
}

func (u *UnstorableError) Error() string { return u.Path + ": " + u.Reason }

// CheckJSON reports the first part of raw that cannot be stored, or nil. raw must be valid JSON.
func CheckJSON(raw json.RawMessage) *UnstorableError {
	if len(raw) == 0 {
		return nil
	}
	if !utf8.Valid(raw) {
		return &UnstorableError{Path: "$", Reason: "is not valid UTF-8"}
	}
	// Every step's output passes here: decode only a document that may hold an escaped NUL or
	// surrogate, a number out of range, or nesting deeper than a decoder takes.
	if !suspicious(raw) {
		return nil
	}
	if loneSurrogate(raw) {
		// Decoders make it U+FFFD, so the decoded value below would not show it.
		return &UnstorableError{Path: "$", Reason: "escapes half of a UTF-16 surrogate pair alone (\\ud800-\\udfff)"}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return &UnstorableError{Path: "$", Reason: "is not valid JSON: " + err.Error()}
	}
	return CheckValue(v, "$")
}

// CheckValue is CheckJSON for a decoded value (numbers as json.Number), whose place is path.
func CheckValue(v any, path string) *UnstorableError {
	switch x := v.(type) {
	case string:
		if strings.ContainsRune(x, 0) {
			return &UnstorableError{Path: path, Reason: "contains a NUL character (\\u0000)"}
		}
	case json.Number:
		if !storableNumber(string(x)) {
			return &UnstorableError{Path: path, Reason: fmt.Sprintf("number %.20s... is out of range", string(x))}
		}
	case float64:
		// Finite by construction (encoding/json rejects anything else).
	case map[string]any:
		for k, e := range x {
			if strings.ContainsRune(k, 0) {
				return &UnstorableError{Path: path, Reason: "has a key with a NUL character (\\u0000)"}
			}
			if u := CheckValue(e, path+"."+k); u != nil {
				return u
			}
		}
	case []any:
		for i, e := range x {
			if u := CheckValue(e, fmt.Sprintf("%s[%d]", path, i)); u != nil {
				return u
			}
		}
	}
	return nil
}

// maxDepth is how deeply encoding/json lets arrays and objects nest.
const maxDepth = 10000

// suspicious reports whether raw has an exponent of five digits or more, a run of more than
// maxScale-9999 digits (the only ways to write a number out of numeric's range), an escape of NUL or
// of a surrogate ("\u0000", "\ud800"), or brackets nested deeper than maxDepth. Brackets, digits and
// escaped backslashes inside strings count too: they only make the full check run.
func suspicious(raw []byte) bool {
	run, depth := 0, 0
	for i, c := range raw {
		switch {
		case c == '\\':
			run = 0
			if i+5 < len(raw) && raw[i+1] == 'u' &&
				(string(raw[i+2:i+6]) == "0000" || (raw[i+2]|0x20 == 'd' && strings.IndexByte("89abcdefABCDEF", raw[i+3]) >= 0)) {
				return true
			}
		case c == '[' || c == '{':
			run = 0
			if depth++; depth > maxDepth {
				return true
			}
		case c == ']' || c == '}':
			run = 0
			depth--
		case c >= '0' && c <= '9':
			if run++; run > maxScale-9999 {
				return true
			}
		case c == 'e' || c == 'E':
			run = 0
			j := i + 1
			if j < len(raw) && (raw[j] == '+' || raw[j] == '-') {
				j++
			}
			k := j
			for k < len(raw) && raw[k] >= '0' && raw[k] <= '9' {
				k++
			}
			if k-j >= 5 {
				return true
			}
		default:
			run = 0
		}
	}
	return false
}

// storableNumber reports whether a JSON number is within numeric's range: at most
// maxDecimalExponent digits before the decimal point and maxScale after it.
func storableNumber(s string) bool {
	m := strings.TrimPrefix(s, "-")
	var exp int64
	if i := strings.IndexAny(m, "eE"); i >= 0 {
		e, err := strconv.ParseInt(m[i+1:], 10, 64)
		if err != nil || e >= maxExponent || e <= -maxExponent {
			return false
		}
		exp, m = e, m[:i]
	}
	intPart, frac, hasPoint := strings.Cut(m, ".")
	if !digitsOnly(intPart) || (hasPoint && !digitsOnly(frac)) {
		return false // not a number
	}
	if exp < int64(len(frac))-maxScale {
		return false // too many digits after the point
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	if digits == "" {
		return true // zero
	}
	lead := len(intPart) + len(frac) - len(digits)
	// The value has len(intPart)-lead+exp digits before the point.
	return exp <= int64(maxDecimalExponent-len(intPart)+lead)
}

func digitsOnly(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// loneSurrogate reports whether raw, valid JSON, escapes half of a UTF-16 surrogate pair without the
// other half, which Postgres' jsonb refuses.
func loneSurrogate(raw []byte) bool {
	for i := 0; i+1 < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++ // the escaped character: a backslash escaping a backslash is skipped whole
		if raw[i] != 'u' || i+4 >= len(raw) {
			continue
		}
		r, ok := hex4(raw[i+1 : i+5])
		i += 4
		switch {
		case !ok:
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return true
			}
			if lo, ok := hex4(raw[i+3 : i+7]); !ok || lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

func hex4(b []byte) (rune, bool) {
	n, err := strconv.ParseUint(string(b), 16, 16)
	return rune(n), err == nil
}

// CleanText replaces the NUL characters of a text (an error message from a service, say) that no
// backend stores in a text column.
func CleanText(s string) string {
	if !strings.ContainsRune(s, 0) {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

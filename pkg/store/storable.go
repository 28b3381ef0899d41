package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"unicode/utf8"
)

// maxDecimalExponent bounds the numbers every backend stores: Postgres' numeric (behind jsonb)
// holds up to 131,072 digits before the decimal point and 16,383 after it.
const maxDecimalExponent = 100_000

// UnstorableError describes a JSON value no backend can store as it is (Postgres' jsonb and text are the
// strictest): invalid UTF-8, a NUL character in a string or key, or a number out of numeric's range.
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
	// Every step's output passes here: decode only a document that may hold an escaped NUL, a
	// number of 100,000 digits or more, or nesting deeper than a decoder takes.
	if !bytes.Contains(raw, []byte(`\u0000`)) && !suspicious(raw) {
		return nil
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

// suspicious reports whether raw has an exponent of six digits or more, a run of more than
// maxDecimalExponent digits (the only ways to write a number out of numeric's range), or brackets
// nested deeper than maxDepth. Brackets and digits inside strings count too: they only make the
// full check run.
func suspicious(raw []byte) bool {
	run, depth := 0, 0
	for i, c := range raw {
		switch {
		case c == '[' || c == '{':
			run = 0
			if depth++; depth > maxDepth {
				return true
			}
		case c == ']' || c == '}':
			run = 0
			depth--
		case c >= '0' && c <= '9':
			if run++; run > maxDecimalExponent {
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
			if k-j >= 6 {
				return true
			}
		default:
			run = 0
		}
	}
	return false
}

// storableNumber reports whether a JSON number is within numeric's range.
func storableNumber(s string) bool {
	f, _, err := big.ParseFloat(s, 10, 64, big.ToNearestEven)
	if err != nil {
		return false // beyond big.Float's own exponent range
	}
	if f.Sign() == 0 {
		return true
	}
	// 2^exp ≈ 10^(exp*log10(2)).
	exp := f.MantExp(nil)
	return exp < maxDecimalExponent*10/3 && exp > -maxDecimalExponent*10/3
}

// CleanText replaces the NUL characters of a text (an error message from a service, say) that no
// backend stores in a text column.
func CleanText(s string) string {
	if !strings.ContainsRune(s, 0) {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

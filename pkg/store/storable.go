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

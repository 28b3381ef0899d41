package store_test

import (
	"bytes"
	"encoding/json"
	"math/big"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

// Postgres' numeric, behind every jsonb number, holds at most 131,072 digits before the decimal point
// (store keeps to 100,000) and 16,383 after it, counting the zeros written after the point (0.10 has
// two) and those an exponent adds (1e-3 has three). Checked against Postgres 15.
const (
	pgMaxIntegerDigits = 100_000
	pgMaxScale         = 16_383
)

var jsonNumberRe = regexp.MustCompile(`^-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?$`)

// pgNumeric reports whether Postgres stores the JSON number n in a jsonb value, computed with exact
// integers, independently of the package.
func pgNumeric(n string) bool {
	m := jsonNumberRe.FindStringSubmatch(n)
	if m == nil {
		return false
	}
	intPart, frac := m[1], m[2]
	exp := new(big.Int)
	if m[3] != "" {
		exp.SetString(strings.TrimPrefix(m[3], "+"), 10)
	}
	if exp.CmpAbs(big.NewInt(1<<30-1)) >= 0 {
		return false // Postgres reads no exponent from ±1073741823 on, even that of a zero
	}
	scale := new(big.Int).Sub(big.NewInt(int64(len(frac))), exp)
	if scale.Cmp(big.NewInt(pgMaxScale)) > 0 {
		return false
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	if digits == "" {
		return true // zero
	}
	lead := len(intPart) + len(frac) - len(digits)
	intDigits := new(big.Int).Add(big.NewInt(int64(len(intPart)-lead)), exp)
	return intDigits.Cmp(big.NewInt(pgMaxIntegerDigits)) <= 0
}

// loneSurrogate reports whether valid JSON text escapes half of a UTF-16 surrogate pair alone
// ("\ud800"), which Postgres' jsonb refuses (encoding/json decodes it as U+FFFD).
func loneSurrogate(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++
		if raw[i] != 'u' {
			continue
		}
		r := hex4(raw[i+1 : i+5])
		i += 4
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return true
			}
			if lo := hex4(raw[i+3 : i+7]); lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		}
	}
	return r
}

// unstorable reports why Postgres would refuse a decoded value, or "": a NUL in a string or key, or a
// number out of numeric's range.
func unstorable(v any) string {
	switch x := v.(type) {
	case string:
		if strings.ContainsRune(x, 0) {
			return "NUL"
		}
	case json.Number:
		if !pgNumeric(string(x)) {
			return "number " + string(x)
		}
	case map[string]any:
		for k, e := range x {
			if strings.ContainsRune(k, 0) {
				return "NUL in key"
			}
			if why := unstorable(e); why != "" {
				return why
			}
		}
	case []any:
		for _, e := range x {
			if why := unstorable(e); why != "" {
				return why
			}
		}
	}
	return ""
}

// FuzzCheckJSON checks the storability check against a model of Postgres' jsonb: whatever the bytes,
// no panic; a document it accepts is valid UTF-8, decodes, and holds no NUL, no lone surrogate and no
// number numeric cannot hold; a valid document it refuses really holds one of those (or nests deeper
// than decoders go); CheckValue agrees with it; and CleanText leaves no NUL and changes nothing else.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `"é ✓ 🚀"`, `{"a": [1, "x", null, true, 1e300, 1e-300, 12345678901234567890123]}`,
		`{"a": "x\u0000y"}`, `{"a\u0000": 1}`, `"\\u0000 is text"`, `["\u0001\u001f"]`,
		`{"a": [1, {"b": 1e999999}]}`, `[1e-999999]`, `1e5000`, `{"n": 1e99999}`, `1e100000`, `-1E+100000`,
		`1e-16383`, `1e-16384`, `1.5e-16382`, `0.5e-16383`, `0e-20000`, `-0.0e-16383`, `12345678901234567890e-16383`,
		`1` + strings.Repeat("0", 99_999), `1` + strings.Repeat("0", 100_000), `0.` + strings.Repeat("0", 16_383),
		`1.` + strings.Repeat("0", 16_383), `0.` + strings.Repeat("0", 16_382) + "1", `0.` + strings.Repeat("0", 16_383) + "1",
		`[` + strings.TrimSuffix(strings.Repeat("1e-9999,", 20), ",") + `]`, `1e99999999999999999999999`,
		`0e1073741822`, `0e1073741823`, `0.0e-16382`, `0.00e-16382`,
		`"\ud800"`, `"\udc00"`, `{"\ud83d\ude80": "\ud83d\ude80"}`, `"\ud800\ud800"`, `"\uDBFF\uDFFF"`, `"\\ud800"`, `"\\\ud800"`,
		strings.Repeat("[", 10_000) + strings.Repeat("]", 10_000), strings.Repeat("[", 10_001) + strings.Repeat("]", 10_001),
		"{\"a\": \"\xff\xfe\"}", "\"\x00\"", `{"s": "e123456 in text"}`, `{"a": 1} trailing`, `[1,]`, ``, " \n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		u := store.CheckJSON(raw)
		if u != nil {
			require.True(t, strings.HasPrefix(u.Path, "$"), "path %q", u.Path)
			require.NotEmpty(t, u.Reason)
			require.True(t, utf8.ValidString(u.Error()), "the reason is stored too: %q", u.Error())
		}

		clean := store.CleanText(string(raw))
		require.NotContains(t, clean, "\x00")
		require.Equal(t, strings.ReplaceAll(string(raw), "\x00", "\uFFFD"), clean)

		if !json.Valid(raw) {
			return // CheckJSON's precondition
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		decErr := dec.Decode(&v)
		if u == nil {
			require.True(t, utf8.Valid(raw))
			require.NoError(t, decErr, "accepted JSON decodes")
			require.Empty(t, unstorable(v), "accepted %.200s", raw)
			require.False(t, loneSurrogate(raw), "accepted a lone surrogate: %.200s", raw)
			require.Nil(t, store.CheckValue(v, "$"))
			return
		}
		if !utf8.Valid(raw) || decErr != nil || loneSurrogate(raw) {
			return
		}
		require.NotEmpty(t, unstorable(v), "refused %.200s: %v", raw, u)
		cv := store.CheckValue(v, "$")
		require.NotNil(t, cv, "CheckJSON refuses %.200s (%v), CheckValue accepts it", raw, u)
		require.Equal(t, u.Path, cv.Path)
	})
}

// FuzzCheckValue gives CheckValue Go values built from fuzzed parts, as the orchestrator does with
// input decoded by the API: strings and keys with any bytes, numbers as any text.
func FuzzCheckValue(f *testing.F) {
	f.Add("key", "value", "1e5")
	f.Add("k\x00", "v", "1")
	f.Add("k", "v\x00", "1e-16384")
	f.Add("", "\xff", "0.5e-16383")
	f.Add("a.b", "", "1e100001")
	f.Fuzz(func(t *testing.T, key, val, num string) {
		v := map[string]any{key: []any{val, json.Number(num), map[string]any{"n": json.Number(num)}}}
		u := store.CheckValue(v, "$")
		nul := strings.ContainsRune(key, 0) || strings.ContainsRune(val, 0)
		bad := nul || !pgNumeric(num)
		require.Equal(t, bad, u != nil, "key %q val %q num %q: %v", key, val, num, u)
		if u != nil && !nul {
			require.Equal(t, "$."+key+"[1]", u.Path)
		}
	})
}

// What Postgres 15's jsonb refuses, CheckJSON refuses: a lone surrogate escape, a number with more
// than 16,383 digits after the point (zeros a negative exponent adds count), an exponent from
// ±1073741823 on. These passed and failed the write of the step's outcome.
func TestCheckJSONFollowsPostgres(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		`"\ud800"`, `{"\udc00": 1}`, `["\ud83d"]`, `"\ud83d\ud83d"`, `[1e-16384]`, `{"n": 0.5e-16383}`, `0e1073741823`,
		`0e-20000`, `1.` + strings.Repeat("0", 16_384),
	} {
		require.NotNil(t, store.CheckJSON(json.RawMessage(raw)), "%.40s", raw)
	}
	for _, raw := range []string{
		`"\ud83d\ude80"`, `"\\ud800"`, `1e-16383`, `1.5e-16382`, `12345678901234567890e-16383`, `0e1073741822`,
		`1.` + strings.Repeat("0", 16_383), `1e99999`,
	} {
		require.Nil(t, store.CheckJSON(json.RawMessage(raw)), "%.40s", raw)
	}
	require.Nil(t, store.CheckValue(json.Number("1.5e-16382"), "$"))
	require.NotNil(t, store.CheckValue(json.Number("1.5e-16383"), "$"))
}

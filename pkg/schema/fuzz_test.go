package schema_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/cao-run/cao/pkg/schema"
)

// registryValue decodes a schema written in YAML into the values the registry hands to Compile:
// map[string]any, []any, string, int, float64 (finite), bool and nil. ok is false for documents the
// registry refuses (NaN, infinities, keys that are not strings) or builds differently.
func registryValue(src string) (v any, ok bool) {
	if err := yaml.Unmarshal([]byte(src), &v); err != nil {
		return nil, false
	}
	return normalize(v)
}

func normalize(v any) (any, bool) {
	switch x := v.(type) {
	case nil, bool, string, int:
		return x, true
	case float64:
		return x, !math.IsNaN(x) && !math.IsInf(x, 0)
	case int64, uint64: // integers beyond int: the registry makes them float64
		f, _ := new(big.Float).SetString(jsonString(x))
		ff, _ := f.Float64()
		return ff, !math.IsInf(ff, 0)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			n, ok := normalize(e)
			if !ok {
				return nil, false
			}
			out[i] = n
		}
		return out, true
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			n, ok := normalize(e)
			if !ok {
				return nil, false
			}
			out[k] = n
		}
		return out, true
	}
	return nil, false // time.Time, []byte (!!binary), map[any]any: not what the registry builds
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// decodeInput decodes JSON as the API decodes input_data: numbers as json.Number.
func decodeInput(b []byte) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		return nil, false
	}
	return v, true
}

// checkErrors asserts the shape of Validate's answer: located, worded, sorted by field then message.
// A field is "" only for a key "" at the top of the input (paths are keys joined with dots, unescaped).
func checkErrors(t *testing.T, errs []schema.FieldError, in []byte) {
	t.Helper()
	for i, e := range errs {
		if !bytes.Contains(in, []byte(`""`)) {
			require.NotEmpty(t, e.Field)
		}
		require.NotEmpty(t, e.Message)
		require.True(t, utf8.ValidString(e.Message), "message %q", e.Message)
		if i > 0 {
			p := errs[i-1]
			require.True(t, p.Field < e.Field || (p.Field == e.Field && p.Message <= e.Message), "unsorted: %v", errs)
		}
	}
}

// FuzzSchema compiles any YAML document as a schema, as the registry does, and validates any JSON
// input against it. Compile fails only with *CompileErrors; Validate never panics, answers the same
// twice and in order; the input gets the same answer after a JSON round trip (what the API stores and
// re-validates on resume); and the schema gets the same answers after its own JSON round trip (GET
// /features publishes it as JSON).
func FuzzSchema(f *testing.F) {
	for _, s := range []struct{ doc, input string }{
		{"type: object\nrequired: [business_name]\nproperties: {business_name: {type: string, minLength: 1, maxLength: 200}}", `{"business_name": "Acme"}`},
		{"type: object\nrequired: [business_name]\nproperties: {business_name: {type: string, minLength: 1, maxLength: 200}}", `{}`},
		{"{type: object, additionalProperties: false, properties: {a: {type: [string, \"null\"]}}}", `{"a": null, "b": 1}`},
		{"{type: array, minItems: 1, maxItems: 3, items: {type: integer, minimum: 1, exclusiveMaximum: 10}}", `[1, 2.0, 1e1, 3.5]`},
		{"{minimum: 0.1, maximum: 0.3}", `0.1`},
		{"{exclusiveMinimum: 0.1, exclusiveMaximum: 0.3}", `0.30000000000000004`},
		{"{enum: [0.1, 0.2, 0.3, a, null, {x: [1]}]}", `0.3`},
		{"{const: 0.7}", `0.7`},
		{"{type: integer, maximum: 9007199254740993}", `9007199254740994`},
		{"{type: integer}", `1e999999`},
		{"{type: number, minimum: -1e308, maximum: 1e308}", `[1e999999, -1e999999, 1e-999999]`},
		{"{type: integer, minimum: 18446744073709551616}", `18446744073709551617`},
		{"{type: string, pattern: \"^[a-z]+$\", format: email}", `"a@b.c"`},
		{"{format: uri}", `"http://x/\u0000"`},
		{"{format: date-time}", `"2024-02-30T25:00:00Z"`},
		{"{maxLength: 2}", "\"\xff\xfe\xfd\""},
		{"{maxLength: 1}", `"🚀"`},
		{"{description: \"\x00\", title: t, default: {a: 1}, examples: [1], $comment: c, $schema: s}", `"\u0000"`},
		{"minLenght: 1", `""`},
		{"{properties: {a: {properties: {b: {properties: {c: {type: string}}}}}}}", `{"a": {"b": {"c": 1}}}`},
		{"x: &a [*a]", `1`},
		{"{type: object}", strings.Repeat(`{"a":`, 1000) + "1" + strings.Repeat("}", 1000)},
		{"{type: string, maxLength: 3}", `"` + strings.Repeat("é", 1<<12) + `"`},
		{"!!binary aGVsbG8=", `1`},
		{"{minimum: .nan}", `1`},
	} {
		f.Add(s.doc, []byte(s.input))
	}
	f.Fuzz(func(t *testing.T, doc string, in []byte) {
		d, ok := registryValue(doc)
		if !ok {
			return
		}
		s, err := schema.Compile(d)
		if err != nil {
			require.Nil(t, s)
			for _, e := range flatten(err) {
				var ce *schema.CompileError
				require.True(t, errors.As(e, &ce), "%T: %v", e, e)
				require.NotEmpty(t, ce.Message)
			}
			return
		}
		v, ok := decodeInput(in)
		if !ok {
			return
		}
		errs := s.Validate(v)
		checkErrors(t, errs, in)
		require.Equal(t, errs, s.Validate(v), "deterministic")

		// The input after a JSON round trip: the same answer.
		b, err := json.Marshal(v)
		require.NoError(t, err)
		v2, ok := decodeInput(b)
		require.True(t, ok, "%s", b)
		require.Equal(t, errs, s.Validate(v2), "input %s after a round trip", b)

		// The schema after a JSON round trip: the same answers.
		sb, err := json.Marshal(s)
		require.NoError(t, err)
		sd, ok := decodeInput(sb)
		require.True(t, ok, "%s", sb)
		s2, err := schema.Compile(sd)
		require.NoError(t, err, "schema %s after a round trip", sb)
		require.Equal(t, errs, s2.Validate(v), "schema %s after a round trip", sb)
	})
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

// planSchema is a realistic feature input: the contract's business plan with more fields.
const planSchema = `
type: object
required: [business_name, budget]
additionalProperties: false
properties:
  business_name: {type: string, minLength: 1, maxLength: 200}
  email: {type: string, format: email}
  website: {type: string, format: uri}
  launch: {type: string, format: date-time}
  budget: {type: number, minimum: 0.1, maximum: 1000000.5}
  share: {type: number, exclusiveMinimum: 0, exclusiveMaximum: 0.3}
  employees: {type: integer, minimum: 1, maximum: 10000}
  market: {enum: [local, national, global, 0.5]}
  version: {const: 2}
  country: {type: string, pattern: "^[A-Z]{2}$"}
  tags: {type: array, maxItems: 10, items: {type: string, maxLength: 30}}
  products:
    type: array
    minItems: 1
    items:
      type: object
      required: [name]
      properties:
        name: {type: string, minLength: 1}
        price: {type: [number, "null"], minimum: 0}
        scores: {type: array, items: {type: number, minimum: -1, maximum: 1}}
  notes: {type: ["string", "null"]}
  extra: {}
`

// FuzzValidate validates any JSON input against planSchema, and checks the answer field by field
// against a reference written with exact rationals: numbers compare as the decimals written in the
// schema and in the input (0.1 is 0.1). It also bounds the time: no input of 64 KiB may take more than
// a second to validate, however large its numbers' exponents.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"business_name": "Acme", "budget": 1000}`,
		`{"business_name": "Acme", "budget": 0.1, "share": 0.29999999999999999, "employees": 1e4, "market": 0.5, "version": 2.0}`,
		`{"business_name": "Acme", "budget": 1000000.5, "share": 0.3, "employees": 1.5, "market": "mars", "version": "2"}`,
		`{"business_name": "", "budget": 0.09999999999999999, "email": "Bob <bob@example.com>", "website": "/x", "launch": "2024-01-31"}`,
		`{"business_name": "Acme", "budget": 5, "email": "a@example.com", "website": "https://x.example/y?z=1", "launch": "2024-01-31T12:00:00.5+01:00", "country": "FR"}`,
		`{"business_name": "Acme", "budget": 5, "products": [{"name": "a", "price": null, "scores": [-1, 0, 1, 1.0000000000000000001]}, {"price": -0.0}, 3]}`,
		`{"business_name": "Acme", "budget": 5, "tags": ["a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 1], "notes": null, "extra": {"any": [1, {"thing": true}]}}`,
		`{"business_name": "Acme", "budget": 1e999999, "employees": 1e999999, "share": 1e-999999}`,
		`{"business_name": "Acme", "budget": 5, "products": [{"name": "a", "scores": [` + strings.TrimSuffix(strings.Repeat("1e999999,", 200), ",") + `]}]}`,
		`{"business_name": "Acme", "budget": 5, "products": [{"name": "a", "scores": [` + strings.TrimSuffix(strings.Repeat("1e-99999,", 200), ",") + `]}]}`,
		"{\"business_name\": \"\xff\xfe\", \"budget\": 1, \"country\": \"\\u0000F\"}",
		`{"business_name": "` + strings.Repeat("🚀", 200) + `", "budget": 1}`,
		`{"business_name": "` + strings.Repeat("🚀", 201) + `", "budget": 1}`,
		`{"business_name": "a", "budget": 1, "unknown": 1, "products": []}`,
		`[]`, `null`, `"x"`, `1e999999`,
	} {
		f.Add([]byte(s))
	}
	d, ok := registryValue(planSchema)
	require.True(f, ok)
	s := schema.MustCompile(d)
	f.Fuzz(func(t *testing.T, in []byte) {
		v, ok := decodeInput(in)
		if !ok {
			return
		}
		start := time.Now()
		errs := s.Validate(v)
		if len(in) <= 64<<10 {
			require.Less(t, time.Since(start), time.Second, "validating %d bytes", len(in))
		}
		checkErrors(t, errs, in)
		b, err := json.Marshal(v)
		require.NoError(t, err)
		v2, _ := decodeInput(b)
		require.Equal(t, errs, s.Validate(v2), "the same answer after a JSON round trip")

		want := planReference(v)
		if want == nil {
			return // numbers beyond what the reference computes quickly
		}
		got := map[string]bool{}
		for _, e := range errs {
			got[e.Field] = true
		}
		if m, ok := v.(map[string]any); ok {
			for _, k := range []string{"email", "website", "launch"} {
				if _, isString := m[k].(string); isString {
					delete(got, k) // formats are checked by the package's own tests
				}
			}
		}
		require.Equal(t, want, got, "fields in error for %s (errors: %v)", in, errs)
	})
}

// planReference returns the fields of v in error under planSchema, computed independently of the
// package; nil when v holds a number whose exponent makes exact arithmetic too slow for a fuzz loop.
func planReference(v any) map[string]bool {
	bad := map[string]bool{}
	m, ok := v.(map[string]any)
	if !ok {
		bad["$"] = true
		return bad
	}
	slow := false
	num := func(x any) (*big.Rat, bool) {
		n, ok := x.(json.Number)
		if !ok {
			return nil, false
		}
		if e := strings.IndexAny(string(n), "eE"); e >= 0 && len(n)-e > 4 {
			slow = true
			return nil, false
		}
		r, ok := new(big.Rat).SetString(string(n))
		return r, ok
	}
	rat := func(s string) *big.Rat { r, _ := new(big.Rat).SetString(s); return r }
	// inRange marks field unless x is a number within [lo, hi] (or (lo, hi)); "" is no bound.
	inRange := func(field string, x any, lo, hi string, exclusive bool) {
		r, ok := num(x)
		if !ok {
			bad[field] = true
			return
		}
		below := lo != "" && (r.Cmp(rat(lo)) < 0 || (exclusive && r.Cmp(rat(lo)) == 0))
		above := hi != "" && (r.Cmp(rat(hi)) > 0 || (exclusive && r.Cmp(rat(hi)) == 0))
		bad[field] = bad[field] || below || above
	}
	runes := func(x any) (int, bool) {
		s, ok := x.(string)
		return utf8.RuneCountInString(s), ok
	}
	for _, k := range []string{"business_name", "budget"} {
		if _, ok := m[k]; !ok {
			bad[k] = true
		}
	}
	for k, x := range m {
		switch k {
		case "business_name":
			n, ok := runes(x)
			bad[k] = !ok || n < 1 || n > 200
		case "budget":
			inRange(k, x, "0.1", "1000000.5", false)
		case "share":
			inRange(k, x, "0", "0.3", true)
		case "employees":
			inRange(k, x, "1", "10000", false)
			if r, ok := num(x); ok && !r.IsInt() {
				bad[k] = true
			}
		case "market":
			switch x := x.(type) {
			case string:
				bad[k] = !slices.Contains([]string{"local", "national", "global"}, x)
			case json.Number:
				r, ok := num(x)
				bad[k] = !ok || r.Cmp(rat("0.5")) != 0
			default:
				bad[k] = true
			}
		case "version":
			r, ok := num(x)
			bad[k] = !ok || r.Cmp(rat("2")) != 0
		case "country":
			s, ok := x.(string)
			bad[k] = !ok || len(s) < 2 || !planCountry(s)
		case "email", "website", "launch":
			// Formats are the package's own tests' business: only a non-string is sure to fail.
			bad[k] = false
			if _, ok := x.(string); !ok {
				bad[k] = true
			}
		case "tags":
			l, ok := x.([]any)
			if !ok || len(l) > 10 {
				bad[k] = true
				continue
			}
			for i, e := range l {
				if n, ok := runes(e); !ok || n > 30 {
					bad[indexed(k, i)] = true
				}
			}
		case "products":
			l, ok := x.([]any)
			if !ok || len(l) < 1 {
				bad[k] = true
				continue
			}
			for i, e := range l {
				p := indexed(k, i)
				pm, ok := e.(map[string]any)
				if !ok {
					bad[p] = true
					continue
				}
				name, has := pm["name"]
				if n, ok := runes(name); !has || !ok || n < 1 {
					bad[p+".name"] = true
				}
				if price, has := pm["price"]; has && price != nil {
					inRange(p+".price", price, "0", "", false)
				}
				if sc, has := pm["scores"]; has {
					sl, ok := sc.([]any)
					if !ok {
						bad[p+".scores"] = true
						continue
					}
					for j, e := range sl {
						inRange(indexed(p+".scores", j), e, "-1", "1", false)
					}
				}
			}
		case "notes":
			if _, ok := x.(string); !ok && x != nil {
				bad[k] = true
			}
		case "extra":
		default:
			bad[k] = true // additionalProperties: false
		}
	}
	if slow {
		return nil
	}
	for k, b := range bad {
		if !b {
			delete(bad, k)
		}
	}
	return bad
}

func indexed(path string, i int) string { return path + "[" + itoa(i) + "]" }

func itoa(i int) string { return big.NewInt(int64(i)).String() }

// planCountry is the pattern ^[A-Z]{2}$.
func planCountry(s string) bool {
	return len(s) == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z'
}

// Bounds written in a registry file are float64 once decoded from YAML. They were compared as their
// binary values (0.1000000000000000055511151231257827...), so an input of exactly 0.1 was "less
// than" minimum: 0.1, and const: 0.7 refused 0.7. A float now counts as the decimal written.
func TestNumbersCompareAsWritten(t *testing.T) {
	t.Parallel()
	d, ok := registryValue(`{type: object, properties: {min: {minimum: 0.1}, max: {maximum: 0.3}, c: {const: 0.7},
	  e: {enum: [0.2]}, x: {exclusiveMaximum: 0.3}, big: {minimum: 18446744073709551616}}}`)
	require.True(t, ok)
	s := schema.MustCompile(d)
	v, _ := decodeInput([]byte(`{"min": 0.1, "max": 0.3, "c": 0.7, "e": 0.2, "x": 0.29999999999999999, "big": 18446744073709552000}`))
	require.Empty(t, s.Validate(v))
	v, _ = decodeInput([]byte(`{"min": 0.09999999999999999, "max": 0.30000000000000001, "c": 0.70000000000000001, "e": 0.2000001, "x": 0.3}`))
	require.Equal(t, []schema.FieldError{
		{Field: "c", Message: "must be 0.7"}, {Field: "e", Message: "must be one of: 0.2"},
		{Field: "max", Message: "must be at most 0.3"}, {Field: "min", Message: "must be at least 0.1"},
		{Field: "x", Message: "must be less than 0.3"},
	}, s.Validate(v))
}

// Every number an input holds is compared: math/big took 60ms to build 10^999999 for each 1e999999,
// twice, so a body of such numbers kept a CPU busy for minutes. It takes microseconds now.
func TestHugeExponentsAreCheap(t *testing.T) {
	t.Parallel()
	s := schema.MustCompile(map[string]any{"type": "array", "items": map[string]any{"type": "integer", "minimum": 0, "maximum": 1e308}})
	v, ok := decodeInput([]byte("[" + strings.TrimSuffix(strings.Repeat("1e999999,", 10_000), ",") + "]"))
	require.True(t, ok)
	start := time.Now()
	errs := s.Validate(v)
	require.Len(t, errs, 10_000)
	require.Equal(t, schema.FieldError{Field: "[0]", Message: "must be at most 1e+308"}, errs[0])
	require.Less(t, time.Since(start), 2*time.Second)
}

package schema_test

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/schema"
)

// The keywords of draft 2020-12 beyond the old subset, each with the field and message a 422 shows.
func TestValidateDraft2020(t *testing.T) {
	t.Parallel()

	const address = `
$defs:
  address:
    type: object
    required: [city]
    properties:
      city: {type: string, minLength: 1}
      zip: {type: string, pattern: "^[0-9]{5}$"}
type: object
properties:
  home: {$ref: "#/$defs/address"}
  offices: {type: array, items: {$ref: "#/$defs/address"}}
`
	const tree = `
$defs:
  node:
    type: object
    required: [name]
    properties:
      name: {type: string}
      children: {type: array, items: {$ref: "#/$defs/node"}}
$ref: "#/$defs/node"
`
	const payment = `
type: object
required: [payment]
properties:
  payment:
    oneOf:
      - {type: object, required: [kind, iban], properties: {kind: {const: sepa}, iban: {type: string}}, additionalProperties: false}
      - {type: object, required: [kind, card], properties: {kind: {const: card}, card: {type: string, pattern: "^[0-9]{16}$"}}, additionalProperties: false}
`
	tests := []struct {
		name   string
		schema string
		input  string
		want   []schema.FieldError // nil: valid
	}{
		{"$ref ok", address, `{"home": {"city": "Lyon", "zip": "69001"}, "offices": [{"city": "Paris"}]}`, nil},
		{"$ref errors are located in the input", address, `{"home": {"zip": "6900"}, "offices": [{"city": "Paris"}, {"city": ""}]}`, []schema.FieldError{
			{"home.city", "is required"}, {"home.zip", "must match the pattern ^[0-9]{5}$"}, {"offices[1].city", "must not be empty"},
		}},
		{"recursive $ref", tree, `{"name": "root", "children": [{"name": "a", "children": [{"name": 1}, {}]}]}`, []schema.FieldError{
			{"children[0].children[0].name", "must be a string"}, {"children[0].children[1].name", "is required"},
		}},
		{"$ref by anchor", "{$defs: {pos: {$anchor: positive, type: integer, minimum: 1}}, items: {$ref: '#positive'}}", `[1, 0]`,
			[]schema.FieldError{{"[1]", "must be at least 1"}}},
		{"oneOf ok", payment, `{"payment": {"kind": "card", "card": "4242424242424242"}}`, nil},
		{"oneOf none", payment, `{"payment": {"kind": "card", "card": "42"}}`, []schema.FieldError{
			{"payment", "must match exactly one of the schemas in oneOf (it matches none)"},
		}},
		{"oneOf two", "{oneOf: [{type: integer}, {minimum: 0}]}", `3`, []schema.FieldError{
			{"$", "must match exactly one of the schemas in oneOf, but matches oneOf[0] and oneOf[1]"},
		}},
		{"oneOf of types", "{oneOf: [{type: string}, {type: integer}]}", `1.5`, []schema.FieldError{{"$", "must be a string or an integer"}}},
		{"anyOf of types", "{properties: {id: {anyOf: [{type: string, minLength: 1}, {type: integer}]}}}", `{"id": ""}`, []schema.FieldError{
			{"id", "must match at least one of the schemas in anyOf (it matches none)"},
		}},
		{"anyOf type only", "{properties: {id: {anyOf: [{type: string}, {type: integer}]}}}", `{"id": null}`, []schema.FieldError{
			{"id", "must be a string or an integer"},
		}},
		{"anyOf ok", "{anyOf: [{type: string}, {type: integer}]}", `"x"`, nil},
		{"allOf reports each branch", "{allOf: [{required: [a]}, {required: [b]}, {required: [a]}]}", `{}`, []schema.FieldError{
			{"a", "is required"}, {"b", "is required"},
		}},
		{"not", "{not: {const: admin}}", `"admin"`, []schema.FieldError{{"$", "must not match the schema in not"}}},
		{"if then else", "{if: {properties: {country: {const: FR}}}, then: {required: [siret]}, else: {required: [ein]}}", `{"country": "FR"}`,
			[]schema.FieldError{{"siret", "is required"}}},
		{"else", "{if: {properties: {country: {const: FR}}}, then: {required: [siret]}, else: {required: [ein]}}", `{"country": "US"}`,
			[]schema.FieldError{{"ein", "is required"}}},
		{"patternProperties", "{type: object, patternProperties: {'^x-': {type: string}}, additionalProperties: false}", `{"x-a": "1", "x-b": 2, "y": 3}`,
			[]schema.FieldError{{"x-b", "must be a string"}, {"y", "is not allowed"}}},
		{"additionalProperties schema", "{properties: {a: {}}, additionalProperties: {type: integer}}", `{"a": "x", "b": 1, "c": "x"}`,
			[]schema.FieldError{{"c", "must be an integer"}}},
		{"false subschema", "{properties: {secret: false}}", `{"secret": 1}`, []schema.FieldError{{"secret", "is not allowed"}}},
		{"propertyNames", "{propertyNames: {pattern: '^[a-z]+$', maxLength: 3}}", `{"ok": 1, "Bad": 2}`, []schema.FieldError{
			{"Bad", "is not an allowed property name: it must match the pattern ^[a-z]+$"},
		}},
		{"dependentRequired", "{dependentRequired: {card: [cvc]}}", `{"card": "x"}`, []schema.FieldError{{"cvc", "is required when card is present"}}},
		{"dependentSchemas", "{dependentSchemas: {card: {properties: {cvc: {type: string}}}}}", `{"card": "x", "cvc": 1}`,
			[]schema.FieldError{{"cvc", "must be a string"}}},
		{"min and max properties", "{minProperties: 2}", `{"a": 1}`, []schema.FieldError{{"$", "must have at least 2 properties"}}},
		{"prefixItems and items false", "{prefixItems: [{type: string}, {type: integer}], items: false}", `["a", "b", 3]`,
			[]schema.FieldError{{"[1]", "must be an integer"}, {"[2]", "is not allowed"}}},
		{"contains", "{contains: {const: admin}}", `["a", "b"]`, []schema.FieldError{{"$", "must hold at least one item that matches contains"}}},
		{"minContains", "{contains: {type: integer}, minContains: 2}", `[1, "a"]`, []schema.FieldError{{"$", "must hold at least 2 items that match contains (it holds 1)"}}},
		{"uniqueItems", "{uniqueItems: true}", `[1, 2, 1.0]`, []schema.FieldError{{"$", "must not hold the same item twice (items 0 and 2 are equal)"}}},
		{"uniqueItems objects", "{uniqueItems: true}", `[{"a": [1]}, {"a": [1.0]}]`, []schema.FieldError{{"$", "must not hold the same item twice (items 0 and 1 are equal)"}}},
		{"unevaluatedProperties", "{allOf: [{properties: {a: {}}}], unevaluatedProperties: false}", `{"a": 1, "b": 2}`,
			[]schema.FieldError{{"b", "is not allowed"}}},
		{"multipleOf decimal", "{multipleOf: 0.1}", `0.3`, nil}, // 0.3 / 0.1 in binary floating point is 2.9999999999999996
		{"multipleOf bad", "{multipleOf: 0.1}", `0.35`, []schema.FieldError{{"$", "must be a multiple of 0.1"}}},
		{"const object", "{const: {a: [1, 2]}}", `{"a": [1, 2.0]}`, nil},
		{"$schema at the root", "{$schema: 'https://json-schema.org/draft/2020-12/schema', $id: 'https://example.com/plan', type: integer}", `"x"`,
			[]schema.FieldError{{"$", "must be an integer"}}},
		{"relative $id at the root", "{$id: plan.json, $defs: {n: {type: integer}}, items: {$ref: '#/$defs/n'}}", `[1, "x"]`,
			[]schema.FieldError{{"[1]", "must be an integer"}}},
		{"annotations of 2020-12", "{deprecated: true, readOnly: false, writeOnly: false, examples: [1], contentMediaType: text/plain}", `1`, nil},
		{"number or integer", "{type: [number, integer]}", `"1"`, []schema.FieldError{{"$", "must be a number"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := schema.Compile(doc(t, tt.schema))
			require.NoError(t, err)
			for _, plain := range []bool{false, true} {
				got := s.Validate(input(t, tt.input, plain))
				if tt.want == nil {
					require.Empty(t, got, "plain=%v", plain)
				} else {
					require.Equal(t, tt.want, got, "plain=%v", plain)
				}
			}
		})
	}
}

// Compile takes what the registry hands it (Go integers, float64) and JSON decoded with UseNumber,
// and refuses what is not JSON.
func TestCompileGoValues(t *testing.T) {
	t.Parallel()

	for _, tt := range []struct {
		name string
		doc  any
		want string
	}{
		{"NaN", map[string]any{"minimum": math.NaN()}, "minimum: invalid number NaN (JSON has no NaN or infinity)"},
		{"infinity", map[string]any{"maximum": math.Inf(1)}, "maximum: invalid number +Inf"},
		{"malformed json.Number", map[string]any{"const": json.Number("1.")}, `const: invalid number "1."`},
		{"non-string key", map[string]any{"properties": map[any]any{1: map[string]any{}}}, "properties: keys must be strings, got 1"},
		{"not JSON", map[string]any{"default": time.Second}, "default: unsupported value (time.Duration)"},
		{"number out of range", map[string]any{"maximum": json.Number("1e2000")}, "maximum: number out of range"},
		{"number out of range in enum", map[string]any{"enum": []any{json.Number("1e-2000")}}, "enum[0]: number out of range"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := schema.Compile(tt.doc)
			require.ErrorContains(t, err, tt.want)
		})
	}

	s, err := schema.Compile(map[string]any{
		"type": "object", "properties": map[any]any{"n": map[string]any{"type": "integer", "maximum": uint64(1) << 63, "multipleOf": int8(3)}},
	})
	require.NoError(t, err)
	require.Empty(t, s.Validate(map[string]any{"n": int64(9)}))
	require.Equal(t, []schema.FieldError{{Field: "n", Message: "must be a multiple of 3"}}, s.Validate(map[string]any{"n": 10}))
	require.Equal(t, []schema.FieldError{{Field: "n", Message: "must be at most 9223372036854775808"}}, s.Validate(map[string]any{"n": json.Number("9223372036854775812")}))
}

// Validate takes what encoding/json decodes; anything else is named, never a panic.
func TestValidateNonJSONValues(t *testing.T) {
	t.Parallel()

	s := schema.MustCompile(doc(t, "{type: object, properties: {a: {type: number}}}"))
	require.Equal(t, []schema.FieldError{
		{Field: "a", Message: `is not a valid number ("12abc")`},
		{Field: "b[1]", Message: "is not a JSON value (float64)"},
		{Field: "c", Message: "is not a JSON value ([]string)"},
	}, s.Validate(map[string]any{"a": json.Number("12abc"), "b": []any{1, math.Inf(-1)}, "c": []string{"x"}}))
}

// The validator panicked on numbers whose exponent is beyond a million (big.Rat refuses them and it
// used the nil result), and spent 24ms on 1e999999: now neither, and the answers stay exact.
func TestHugeNumbers(t *testing.T) {
	t.Parallel()

	s := schema.MustCompile(doc(t, `
type: object
properties:
  min: {minimum: 1}
  max: {maximum: 1}
  int: {type: integer}
  tiny: {exclusiveMinimum: 0}
  mult: {multipleOf: 3}
  enum: {enum: [1, 10]}
`))
	v, ok := decodeInput([]byte(`{"min": 1e1000001, "max": -1E+99999999999999999999999, "int": 12.5e1000001, "tiny": 1e-1000001, "mult": 3e1000001, "enum": 1e1000001}`))
	require.True(t, ok)
	require.Equal(t, []schema.FieldError{{Field: "enum", Message: "must be one of: 1, 10"}}, s.Validate(v))

	v, ok = decodeInput([]byte(`{"min": -1e1000001, "max": 1e1000001, "int": 1.5e-1000001, "tiny": -1e-1000001, "mult": 2e1000001, "enum": 1e-1000001}`))
	require.True(t, ok)
	require.Equal(t, []schema.FieldError{
		{Field: "enum", Message: "must be one of: 1, 10"},
		{Field: "int", Message: "must be an integer"},
		{Field: "max", Message: "must be at most 1"},
		{Field: "min", Message: "must be at least 1"},
		{Field: "mult", Message: "must be a multiple of 3"},
		{Field: "tiny", Message: "must be greater than 0"},
	}, s.Validate(v))

	// uniqueItems tells huge numbers apart, and sees equal ones written differently.
	u := schema.MustCompile(doc(t, "{uniqueItems: true}"))
	v, _ = decodeInput([]byte(`[1e999999, 1e999998, 2e999999, 1e-999999, -1e999999, 1e99999999999999999999, 1e99999999999999999998]`))
	require.Empty(t, u.Validate(v))
	v, _ = decodeInput([]byte(`[1e999999, 1e999998, 10e999998]`))
	require.Equal(t, []schema.FieldError{{Field: "$", Message: "must not hold the same item twice (items 0 and 2 are equal)"}}, u.Validate(v))
	v, _ = decodeInput([]byte(`[1e99999999999999999999, 0.1e100000000000000000000]`))
	require.Equal(t, []schema.FieldError{{Field: "$", Message: "must not hold the same item twice (items 0 and 1 are equal)"}}, u.Validate(v))

	// A long number (every digit written out) costs no more.
	long := "0." + strings.Repeat("0", 60_000) + "1"
	v, _ = decodeInput([]byte(`{"tiny": ` + long + `, "int": 1` + strings.Repeat("0", 60_000) + `.5}`))
	start := time.Now()
	require.Equal(t, []schema.FieldError{{Field: "int", Message: "must be an integer"}}, s.Validate(v))
	require.Less(t, time.Since(start), time.Second)
}

// Stand-ins replace the numbers of an input that are out of proportion with the schema: each
// keyword must answer for the stand-in what it answers for the original. Checked against exact
// rational arithmetic on numbers whose exponents stay small enough for math/big.
func TestNumbersStandInsAreExact(t *testing.T) {
	t.Parallel()

	r := rand.New(rand.NewPCG(1, 2))
	digits := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('0' + r.IntN(10))
		}
		b[0] = byte('1' + r.IntN(9))
		return string(b)
	}
	number := func() string {
		sign := ""
		if r.IntN(2) == 0 {
			sign = "-"
		}
		switch r.IntN(4) {
		case 0: // huge
			return fmt.Sprintf("%s%se%d", sign, digits(1+r.IntN(30)), 330+r.IntN(2000))
		case 1: // tiny
			return fmt.Sprintf("%s%se-%d", sign, digits(1+r.IntN(30)), 330+r.IntN(2000))
		case 2: // long
			d := digits(20 + r.IntN(60))
			point := r.IntN(len(d)-1) + 1
			return sign + d[:point] + "." + d[point:]
		}
		return fmt.Sprintf("%s%s.%s", sign, digits(1+r.IntN(3)), digits(1+r.IntN(3))) // ordinary
	}
	rat := func(s string) *big.Rat {
		q, ok := new(big.Rat).SetString(s)
		require.True(t, ok, s)
		return q
	}
	for _, bounds := range []struct{ min, max, mult string }{
		{"0.5", "123.456", ""},
		{"-1e300", "1e300", ""},
		{"1.000000000000000000001", "1e-300", "0.25"},
		{"-123456789.123456789", "-1.5", "3"},
		{"0", "0", "1e-5"},
	} {
		src := fmt.Sprintf("{type: array, uniqueItems: true, items: {minimum: %s, exclusiveMaximum: %s}}", bounds.min, bounds.max)
		intSrc := "{type: integer}"
		if bounds.mult != "" {
			intSrc = fmt.Sprintf("{multipleOf: %s}", bounds.mult)
		}
		s := schema.MustCompile(doc(t, src))
		si := schema.MustCompile(doc(t, intSrc))
		for range 300 {
			a, b := number(), number()
			if r.IntN(4) == 0 {
				b = a
			}
			v, ok := decodeInput([]byte("[" + a + ", " + b + "]"))
			require.True(t, ok)
			got := map[string]bool{}
			for _, e := range s.Validate(v) {
				got[e.Field] = true
			}
			want := map[string]bool{}
			lo, hi := rat(bounds.min), rat(bounds.max)
			for i, n := range []string{a, b} {
				x := rat(n)
				if x.Cmp(lo) < 0 || x.Cmp(hi) >= 0 {
					want[fmt.Sprintf("[%d]", i)] = true
				}
			}
			if rat(a).Cmp(rat(b)) == 0 {
				want["$"] = true
			}
			require.Equal(t, want, got, "%s against %s", v, src)

			x, _ := decodeInput([]byte(a))
			isInt := rat(a).IsInt()
			if bounds.mult != "" {
				isInt = new(big.Rat).Quo(rat(a), rat(bounds.mult)).IsInt()
			}
			require.Equal(t, isInt, len(si.Validate(x)) == 0, "%s against %s", a, intSrc)
		}
	}
}

// A Schema is shared by every request of a feature.
func TestValidateConcurrently(t *testing.T) {
	t.Parallel()

	s := schema.MustCompile(doc(t, `
$defs: {tag: {type: string, maxLength: 3}}
type: object
properties:
  n: {type: array, uniqueItems: true, items: {minimum: 0}}
  tags: {type: array, items: {$ref: "#/$defs/tag"}}
`))
	inputs := []string{
		`{"n": [1e999999, 1e999998, 1e-999999], "tags": ["a"]}`,
		`{"n": [1e999999, 10e999998], "tags": ["abcd"]}`,
		`{"n": [-1.5, 0.` + strings.Repeat("1", 100) + `], "tags": [1]}`,
	}
	want := make([][]schema.FieldError, len(inputs))
	for i, in := range inputs {
		v, ok := decodeInput([]byte(in))
		require.True(t, ok)
		want[i] = s.Validate(v)
	}
	require.Empty(t, want[0])
	require.Len(t, want[1], 2)
	require.Len(t, want[2], 2)
	done := make(chan []schema.FieldError)
	for g := range 8 {
		go func() {
			var last []schema.FieldError
			for j := range 50 {
				v, _ := decodeInput([]byte(inputs[(g+j)%len(inputs)]))
				if got := s.Validate(v); !assertEqualErrs(got, want[(g+j)%len(inputs)]) {
					last = got
				}
			}
			done <- last
		}()
	}
	for range 8 {
		require.Nil(t, <-done)
	}
}

func assertEqualErrs(a, b []schema.FieldError) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// GET /api/v1/features publishes the schema as written: JSON any draft 2020-12 validator reads,
// numbers as they were written in YAML (not 1.0000005e+06).
func TestMarshalJSONDraft2020(t *testing.T) {
	t.Parallel()

	d, ok := registryValue(`
$defs: {money: {type: number, minimum: 0.1, maximum: 1000000.5}}
type: object
properties:
  budget: {$ref: "#/$defs/money"}
  kind: {oneOf: [{const: a}, {const: 1e21}]}
patternProperties: {"^x-": {type: string}}
`)
	require.True(t, ok)
	b, err := json.Marshal(schema.MustCompile(d))
	require.NoError(t, err)
	require.JSONEq(t, `{"$defs": {"money": {"type": "number", "minimum": 0.1, "maximum": 1000000.5}}, "type": "object",
		"properties": {"budget": {"$ref": "#/$defs/money"}, "kind": {"oneOf": [{"const": "a"}, {"const": 1e21}]}},
		"patternProperties": {"^x-": {"type": "string"}}}`, string(b))
	require.Contains(t, string(b), `"maximum":1000000.5`)
}

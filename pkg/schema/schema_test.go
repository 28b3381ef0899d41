package schema_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/cao-run/cao/pkg/schema"
)

// doc decodes a schema written in YAML, as the registry does.
func doc(t *testing.T, src string) any {
	t.Helper()
	var v any
	require.NoError(t, yaml.Unmarshal([]byte(src), &v))
	return v
}

// input decodes JSON as the API does: with UseNumber, or plain (float64) when plain is set.
func input(t *testing.T, src string, plain bool) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(src))
	if !plain {
		dec.UseNumber()
	}
	var v any
	require.NoError(t, dec.Decode(&v))
	return v
}

func TestValidate(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		schema string
		input  string
		want   []schema.FieldError // nil: valid
	}{
		{"type string ok", `type: string`, `"x"`, nil},
		{"type string bad", `type: string`, `1`, []schema.FieldError{{"$", "must be a string"}}},
		{"type object bad", `type: object`, `[]`, []schema.FieldError{{"$", "must be an object"}}},
		{"type array bad", `type: array`, `{}`, []schema.FieldError{{"$", "must be an array"}}},
		{"type boolean bad", `type: boolean`, `"true"`, []schema.FieldError{{"$", "must be a boolean"}}},
		{"type null ok", `type: "null"`, `null`, nil},
		{"type number accepts integer", `type: number`, `3`, nil},
		{"type number bad", `type: number`, `"3"`, []schema.FieldError{{"$", "must be a number"}}},
		{"integer ok", `type: integer`, `3`, nil},
		{"integer with zero fraction", `type: integer`, `3.0`, nil},
		{"integer exponent", `type: integer`, `1e2`, nil},
		{"integer bad", `type: integer`, `3.5`, []schema.FieldError{{"$", "must be an integer"}}},
		{"type list", `type: [string, "null"]`, `null`, nil},
		{"type list bad", `type: [string, "null"]`, `1`, []schema.FieldError{{"$", "must be a string or null"}}},
		{"no type accepts all", `description: anything`, `[1, {"a": null}]`, nil},

		{"required", "type: object\nrequired: [a, b]", `{"a": 1}`, []schema.FieldError{{"b", "is required"}}},
		{"additionalProperties false", "type: object\nproperties: {a: {}}\nadditionalProperties: false", `{"a": 1, "z": 2, "y": 3}`,
			[]schema.FieldError{{"y", "is not allowed"}, {"z", "is not allowed"}}},
		{"additionalProperties default allows", "type: object\nproperties: {a: {}}", `{"z": 2}`, nil},

		{"minLength", `{type: string, minLength: 3}`, `"ab"`, []schema.FieldError{{"$", "must be at least 3 characters"}}},
		{"minLength 1", `{type: string, minLength: 1}`, `""`, []schema.FieldError{{"$", "must not be empty"}}},
		{"maxLength counts runes", `{type: string, maxLength: 2}`, `"市场"`, nil},
		{"maxLength emoji", `{type: string, maxLength: 2}`, `"🚀🚀🚀"`, []schema.FieldError{{"$", "must be at most 2 characters"}}},
		{"maxLength 1", `{maxLength: 1}`, `"ab"`, []schema.FieldError{{"$", "must be at most 1 character"}}},
		{"length ignores non-strings", `{maxLength: 1}`, `12345`, nil},

		{"minimum", `{minimum: 5}`, `4`, []schema.FieldError{{"$", "must be at least 5"}}},
		{"minimum equal ok", `{minimum: 5}`, `5`, nil},
		{"maximum", `{maximum: 5.5}`, `6`, []schema.FieldError{{"$", "must be at most 5.5"}}},
		{"exclusiveMinimum", `{exclusiveMinimum: 5}`, `5`, []schema.FieldError{{"$", "must be greater than 5"}}},
		{"exclusiveMaximum", `{exclusiveMaximum: 5}`, `5`, []schema.FieldError{{"$", "must be less than 5"}}},
		{"exclusiveMaximum ok", `{exclusiveMaximum: 5}`, `4.999`, nil},
		{"big integer exact", `{maximum: 9007199254740993}`, `9007199254740994`, []schema.FieldError{{"$", "must be at most 9007199254740993"}}},

		{"minItems", `{type: array, minItems: 2}`, `[1]`, []schema.FieldError{{"$", "must have at least 2 items"}}},
		{"maxItems", `{type: array, maxItems: 1}`, `[1, 2]`, []schema.FieldError{{"$", "must have at most 1 item"}}},
		{"items", `{type: array, items: {type: integer}}`, `[1, "x", 2.5]`,
			[]schema.FieldError{{"[1]", "must be an integer"}, {"[2]", "must be an integer"}}},

		{"enum", `{enum: [a, b, 1]}`, `"c"`, []schema.FieldError{{"$", `must be one of: "a", "b", 1`}}},
		{"enum number equality", `{enum: [1, 2]}`, `1.0`, nil},
		{"enum object", `{enum: [{a: [1]}]}`, `{"a": [1]}`, nil},
		{"const", `{const: fixed}`, `"other"`, []schema.FieldError{{"$", `must be "fixed"`}}},
		{"const ok", `{const: 3}`, `3`, nil},

		{"pattern", `{pattern: "^[a-z]+$"}`, `"abc1"`, []schema.FieldError{{"$", "must match the pattern ^[a-z]+$"}}},
		{"pattern unanchored", `{pattern: "[0-9]"}`, `"abc1"`, nil},
		{"email ok", `{format: email}`, `"a.b@example.com"`, nil},
		{"email bad", `{format: email}`, `"Bob <bob@example.com>"`, []schema.FieldError{{"$", "must be a valid email address"}}},
		{"uri ok", `{format: uri}`, `"https://example.com/x?y=1"`, nil},
		{"uri bad", `{format: uri}`, `"/relative"`, []schema.FieldError{{"$", "must be a valid absolute URI"}}},
		{"date-time ok", `{format: date-time}`, `"2024-01-31T12:00:00.5+01:00"`, nil},
		{"date-time bad", `{format: date-time}`, `"2024-01-31"`, []schema.FieldError{{"$", "must be a valid date-time (RFC 3339, e.g. 2024-01-31T12:00:00Z)"}}},
		{"hostname asserted", `{format: hostname}`, `"%%%"`, []schema.FieldError{{"$", "must be a valid hostname"}}},
		{"uuid ok", `{format: uuid}`, `"6b3e4cc4-8a5e-4a8f-9c39-5b0f7d1c2e11"`, nil},
		{"uuid bad", `{format: uuid}`, `"6b3e4cc4"`, []schema.FieldError{{"$", "must be a valid UUID"}}},
		{"date ok", `{format: date}`, `"2024-02-29"`, nil},
		{"date bad", `{format: date}`, `"2023-02-29"`, []schema.FieldError{{"$", "must be a valid date (RFC 3339, e.g. 2024-01-31)"}}},
		{"ipv4 bad", `{format: ipv4}`, `"256.1.1.1"`, []schema.FieldError{{"$", "must be a valid IPv4 address"}}},
		{"duration ok", `{format: duration}`, `"P1DT2H"`, nil},
		{"format ignores non-strings", `{format: email}`, `12`, nil},
		{"annotations ignored", `{title: T, description: D, default: 3, examples: [1], $comment: c, type: integer}`, `4`, nil},

		{
			name: "nested and several errors at once",
			schema: `
type: object
required: [business_name, items]
additionalProperties: false
properties:
  business_name: {type: string, minLength: 1, maxLength: 5}
  budget: {type: number, minimum: 0}
  items:
    type: array
    minItems: 1
    items:
      type: object
      required: [name]
      properties:
        name: {type: string}
        qty: {type: integer, minimum: 1}
`,
			input: `{"business_name": "too long name", "budget": -1, "items": [{"name": "a"}, {"qty": 0}, {"name": 3, "qty": 1.5}], "extra": true}`,
			want: []schema.FieldError{
				{"budget", "must be at least 0"},
				{"business_name", "must be at most 5 characters"},
				{"extra", "is not allowed"},
				{"items[1].name", "is required"},
				{"items[1].qty", "must be at least 1"},
				{"items[2].name", "must be a string"},
				{"items[2].qty", "must be an integer"},
			},
		},
		{"root must be object", "type: object\nrequired: [a]", `"x"`, []schema.FieldError{{"$", "must be an object"}}},
		{"type error stops other checks", `{type: string, enum: [a]}`, `1`, []schema.FieldError{{"$", "must be a string"}}},
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

func TestValidateGoValues(t *testing.T) {
	t.Parallel()

	s := schema.MustCompile(doc(t, "type: object\nproperties: {n: {type: integer, maximum: 3}, f: {type: number}}"))
	require.Empty(t, s.Validate(map[string]any{"n": 3, "f": float32(1.5)}))
	require.Equal(t, []schema.FieldError{{"n", "must be at most 3"}}, s.Validate(map[string]any{"n": int64(4)}))

	var nilSchema *schema.Schema
	require.Empty(t, nilSchema.Validate("anything"))
}

func TestCompileErrors(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		schema string
		want   []string
	}{
		{"unknown keyword", "properties: {business_name: {type: string, minLenght: 1}}", []string{"properties.business_name.minLenght: unknown keyword"}},
		{"unknown root keyword", "typ: object", []string{"typ: unknown keyword"}},
		{"negative length", "maxLength: -1", []string{"maxLength: must be a non-negative integer, got -1"}},
		{"fractional count", "minItems: 1.5", []string{"minItems: must be a non-negative integer, got 1.5"}},
		{"string count", "minItems: one", []string{`minItems: must be a non-negative integer, got "one"`}},
		{"bad regexp", "pattern: '[a-'", []string{"pattern: invalid regular expression"}},
		{"bad type name", "type: text", []string{`type: unknown type "text"`}},
		{"bad type in list", "type: [string, text]", []string{`type[1]: unknown type "text"`}},
		{"empty type list", "type: []", []string{"type: must not be an empty list"}},
		{"minimum not number", "minimum: low", []string{`minimum: must be a number, got "low"`}},
		{"exclusiveMinimum bool", "exclusiveMinimum: true", []string{"exclusiveMinimum: must be a number, got true"}},
		{"required not list", "required: a", []string{"required: must be a list of property names"}},
		{"required item", "required: [a, 1, a]", []string{"required[1]: must be a string, got 1", `required[2]: duplicate property "a"`}},
		{"items not object", "items: [{type: string}]", []string{"items: must be a schema (an object, or true or false), got a list (a list of schemas, one per position, is prefixItems)"}},
		{"properties not map", "properties: [a]", []string{"properties: must be an object mapping property names to schemas"}},
		{"property not schema", "properties: {a: string}", []string{`properties.a: must be a schema (an object, or true or false), got "string"`}},
		{"enum empty", "enum: []", []string{"enum: must be a non-empty list"}},
		{"min greater than max", "{minLength: 3, maxLength: 2, minItems: 2, maxItems: 1, minimum: 2, maximum: 1}", []string{
			"minItems: must not be greater than maxItems", "minLength: must not be greater than maxLength", "minimum: must not be greater than maximum",
		}},
		{"root not object", "just a string", []string{`must be a schema object, got "just a string"`}},
		{"several at once", "{type: object, properties: {a: {maxLength: x}, b: {pattern: '('}}}", []string{
			`properties.a.maxLength: must be a non-negative integer, got "x"`, "properties.b.pattern: invalid regular expression",
		}},
		{"typo suggestion", "properties: {a: {minLenght: 1}}", []string{"properties.a.minLenght: unknown keyword (did you mean minLength?)"}},
		{"other draft keyword", "definitions: {a: {type: string}}", []string{"definitions: unknown keyword (draft 2020-12 says $defs)"}},
		{"unknown keyword in $defs and allOf", "{$defs: {a: {typ: string}}, allOf: [{}, {maxLenght: 2}]}", []string{
			"$defs.a.typ: unknown keyword", "allOf[1].maxLenght: unknown keyword",
		}},
		{"unknown keyword under items and patternProperties", "{items: {x-extra: 1}, patternProperties: {'^a': {foo: 1}}}", []string{
			"items.x-extra: unknown keyword", "patternProperties.^a.foo: unknown keyword",
		}},
		{"$vocabulary is for metaschemas", "$vocabulary: {}", []string{"$vocabulary: unknown keyword"}},
		{"unknown format", "format: phone", []string{`format: unknown format "phone" (expected one of: date, date-time,`}},
		{"remote $ref http", "properties: {a: {$ref: 'https://example.com/a.json'}}", []string{
			`properties.a.$ref: only references inside this schema are allowed (such as "#/$defs/name"), got "https://example.com/a.json"`,
		}},
		{"remote $ref file", "$ref: 'file:///etc/passwd'", []string{`$ref: only references inside this schema are allowed`}},
		{"relative $ref", "items: {$ref: 'other.json#/$defs/a'}", []string{`items.$ref: only references inside this schema are allowed`}},
		{"$ref to a missing definition", "{$defs: {a: {}, b: {}}, properties: {x: {$ref: '#/$defs/c'}}}", []string{
			`properties.x.$ref: "#/$defs/c" does not point to a schema of this document (its $defs: #/$defs/a, #/$defs/b)`,
		}},
		{"$ref to something that is not a schema", "{properties: {a: {}}, $ref: '#/properties'}", []string{`$ref: "#/properties" does not point to a schema`}},
		{"$ref to a missing anchor", "$ref: '#nope'", []string{`$ref: no $anchor or $dynamicAnchor "nope" in this schema`}},
		{"bad anchor", "$defs: {a: {$anchor: '1a'}}", []string{`$defs.a.$anchor: must be a name`}},
		{"reference loop", "{$defs: {a: {$ref: '#/$defs/b'}, b: {allOf: [{$ref: '#/$defs/a'}]}}, $ref: '#/$defs/a'}", []string{
			"the references loop without moving into the value (#/$defs/a -> #/$defs/b -> #/$defs/b/allOf/0 -> #/$defs/a)",
		}},
		{"self reference", "$ref: '#'", []string{"$ref: the references loop without moving into the value (# -> #)"}},
		{"$id below the root", "properties: {a: {$id: 'https://example.com/a'}}", []string{"properties.a.$id: only allowed at the root"}},
		{"$schema of another draft", "$schema: 'http://json-schema.org/draft-07/schema#'", []string{
			`$schema: must be "https://json-schema.org/draft/2020-12/schema" (the only draft supported), got "http://json-schema.org/draft-07/schema#"`,
		}},
		{"bad patternProperties regexp", "patternProperties: {'(': {}}", []string{"patternProperties.(: invalid regular expression"}},
		{"multipleOf zero", "multipleOf: 0", []string{"multipleOf: must be greater than 0, got 0"}},
		{"empty schema list", "anyOf: []", []string{"anyOf: must be a non-empty list of schemas, got a list"}},
		{"dependentRequired", "dependentRequired: {a: [b, b]}", []string{`dependentRequired.a[1]: duplicate property "b"`}},
		{"duplicate type", "type: [string, string]", []string{`type[1]: duplicate type "string"`}},
		{"min greater than max counts", "{minProperties: 2, maxProperties: 1, minContains: 3, maxContains: 2}", []string{
			"minContains: must not be greater than maxContains", "minProperties: must not be greater than maxProperties",
		}},
		{"root boolean", "true", []string{"must be a schema object, got true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := schema.Compile(doc(t, tt.schema))
			require.Error(t, err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
			require.Len(t, strings.Split(err.Error(), "\n"), len(tt.want), err.Error())
			var ce *schema.CompileError
			require.ErrorAs(t, err, &ce)
		})
	}
}

func TestMarshalJSONReturnsDocument(t *testing.T) {
	t.Parallel()

	src := "type: object\nrequired: [business_name]\nproperties: {business_name: {type: string, minLength: 1, maxLength: 200}}"
	s := schema.MustCompile(doc(t, src))
	b, err := json.Marshal(map[string]any{"input": s})
	require.NoError(t, err)
	require.JSONEq(t, `{"input": {"type": "object", "required": ["business_name"], "properties": {"business_name": {"type": "string", "minLength": 1, "maxLength": 200}}}}`, string(b))

	b, err = json.Marshal(struct{ S *schema.Schema }{})
	require.NoError(t, err)
	require.JSONEq(t, `{"S": null}`, string(b))
}

func TestFieldErrorJSON(t *testing.T) {
	t.Parallel()

	b, err := json.Marshal(schema.FieldError{Field: "a", Message: "is required"})
	require.NoError(t, err)
	require.JSONEq(t, `{"field": "a", "message": "is required"}`, string(b))
}

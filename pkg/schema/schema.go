// Package schema checks feature input against JSON Schema draft 2020-12, with
// github.com/santhosh-tekuri/jsonschema/v6 as the validator.
//
// Every keyword of draft 2020-12 works: $ref to the document's own $defs (or anchors), allOf, anyOf,
// oneOf, not, if/then/else, properties, patternProperties, additionalProperties (a schema or a
// boolean), propertyNames, dependentRequired, dependentSchemas, prefixItems, items, contains,
// unevaluatedProperties and unevaluatedItems, enum, const, the string, number, array and object
// keywords, and the annotations (title, description, default, examples, $comment, deprecated,
// readOnly, writeOnly). Formats are asserted (see formatNames); an unknown format is a compile error.
// Patterns use Go's regexp syntax (RE2), unanchored. Numbers compare exactly, as the decimals written
// (0.1 is 0.1, 9007199254740993 is not 9007199254740992); lengths count characters (code points).
//
// Compile refuses what the validator would ignore or fetch: a keyword outside the vocabulary (a
// typo such as "minLenght" would silently disable a check), a $ref that leaves the document (http,
// file or relative: nothing is ever loaded), $id or $schema below the root, a $schema other than
// draft 2020-12, and references that loop on the same value.
package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// RootField is the FieldError.Field of an error about the whole value.
const RootField = "$"

// Schema is a compiled schema document; it is immutable and safe for concurrent use.
type Schema struct {
	doc      any // the document, as JSON values; MarshalJSON writes it
	compiled *jsonschema.Schema
	lim      numberLimits
}

// FieldError is one reason a value does not match a schema.
type FieldError struct {
	// Field is the path of the offending value: "business_name", "items[2].name", or RootField.
	Field   string `json:"field"`
	Message string `json:"message"` // human English, e.g. "is required", "must be at most 200 characters"
}

// Error returns "field: message".
func (e FieldError) Error() string { return e.Field + ": " + e.Message }

// CompileError is a problem in a schema document, located by the path of the keyword.
type CompileError struct {
	// Path of the keyword inside the document, e.g. "properties.business_name.minLenght"; "" is the root.
	Path    string
	Message string // what is wrong and what was expected
}

// Error returns "path: message".
func (e *CompileError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// baseURI names the document inside the validator; it never appears in messages.
const baseURI = "urn:cao:input-schema"

// Compile checks a schema document decoded from YAML or JSON (numbers as Go integers, float64 or
// json.Number) and compiles it. Every problem found is reported as a *CompileError; several are
// joined with errors.Join.
func Compile(v any) (*Schema, error) {
	c := &compiler{lim: defaultLimits(), pointers: map[string]string{}, anchors: map[string]string{}, edges: map[string][]edge{}}
	doc, ok := c.toJSON("", v)
	if ok {
		c.schema("", "", doc, true)
	}
	if len(c.errs) == 0 {
		c.checkRefs()
	}
	if len(c.errs) == 0 {
		c.checkLoops()
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}

	jc := jsonschema.NewCompiler()
	jc.DefaultDraft(jsonschema.Draft2020)
	jc.AssertFormat()
	jc.UseLoader(noLoader{})
	if err := jc.AddResource(baseURI, doc); err != nil {
		return nil, &CompileError{Message: cleanMessage(err.Error())}
	}
	compiled, err := jc.Compile(baseURI)
	if err != nil {
		return nil, compileErrors(doc, err)
	}
	return &Schema{doc: doc, compiled: compiled, lim: c.lim}, nil
}

// MarshalJSON returns the document the schema was compiled from, as JSON: what GET /api/v1/features
// publishes, for any draft 2020-12 validator.
func (s *Schema) MarshalJSON() ([]byte, error) {
	if s == nil {
		return []byte("null"), nil
	}
	return json.Marshal(s.doc)
}

// noLoader refuses to load anything: a schema is one document (Compile refuses other references
// before they get here; this is the second lock).
type noLoader struct{}

func (noLoader) Load(u string) (any, error) {
	return nil, fmt.Errorf("loading %s: only references inside the schema are allowed", u)
}

// compileErrors turns an error of the validator's compiler into CompileErrors located in doc.
func compileErrors(doc any, err error) error {
	var sve *jsonschema.SchemaValidationError
	if errors.As(err, &sve) {
		var verr *jsonschema.ValidationError
		if errors.As(sve.Err, &verr) {
			var fes []FieldError
			collect(verr, doc, &fes)
			errs := make([]error, 0, len(fes))
			for _, fe := range dedupe(fes) {
				path := fe.Field
				if path == RootField {
					path = ""
				}
				errs = append(errs, &CompileError{Path: path, Message: fe.Message})
			}
			if len(errs) > 0 {
				return errors.Join(errs...)
			}
		}
	}
	var rerr *jsonschema.InvalidRegexError
	if errors.As(err, &rerr) {
		_, ptr, _ := strings.Cut(rerr.URL, "#")
		return &CompileError{Path: pointerPath(doc, ptr), Message: "invalid regular expression: " + rerr.Err.Error()}
	}
	return &CompileError{Message: cleanMessage(err.Error())}
}

func cleanMessage(s string) string { return strings.ReplaceAll(s, baseURI, "") }

// pointerPath turns a JSON pointer into doc ("/properties/a~1b/pattern") into a path
// ("properties.a/b.pattern").
func pointerPath(doc any, ptr string) string {
	if ptr == "" {
		return ""
	}
	toks := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return instancePath(doc, toks)
}

// instancePath writes the location toks of a value inside v as a path: keys joined with dots,
// indexes in brackets ("items[2].sku"); "" is v itself.
func instancePath(v any, toks []string) string {
	var b strings.Builder
	for _, t := range toks {
		if l, ok := v.([]any); ok {
			i, err := strconv.Atoi(t)
			if err == nil && i >= 0 && i < len(l) {
				b.WriteString("[" + t + "]")
				v = l[i]
				continue
			}
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(t)
		if m, ok := v.(map[string]any); ok {
			v = m[t]
		} else {
			v = nil
		}
	}
	return b.String()
}

func fieldOf(path string) string {
	if path == "" {
		return RootField
	}
	return path
}

// Validate checks v, a value decoded by encoding/json into any (with or without UseNumber), and
// returns every problem found, one per failing value and keyword, sorted by field then message; nil
// means v is valid. A nil Schema accepts everything.
func (s *Schema) Validate(v any) []FieldError {
	if s == nil {
		return nil
	}
	p := prepared{lim: s.lim}
	inst, _ := p.prepare(v)
	if p.bad {
		var errs []FieldError
		badValues("", v, &errs)
		return dedupe(errs)
	}
	err := s.compiled.Validate(inst)
	if err == nil {
		return nil
	}
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return []FieldError{{Field: RootField, Message: err.Error()}}
	}
	var errs []FieldError
	collect(verr, inst, &errs)
	return dedupe(errs)
}

// dedupe sorts errs by field then message and drops repeats (allOf branches may find the same).
func dedupe(errs []FieldError) []FieldError {
	if len(errs) == 0 {
		return nil
	}
	sort.Slice(errs, func(i, j int) bool {
		if errs[i].Field != errs[j].Field {
			return errs[i].Field < errs[j].Field
		}
		return errs[i].Message < errs[j].Message
	})
	return slices.Compact(errs)
}

var english = message.NewPrinter(language.English)

// collect flattens the validator's tree of errors into one FieldError per failing value and
// keyword: the innermost causes, except for anyOf and oneOf, which are reported where they failed
// (which branch the value was meant for is the client's to say).
func collect(e *jsonschema.ValidationError, inst any, out *[]FieldError) {
	path := instancePath(inst, e.InstanceLocation)
	add := func(format string, args ...any) {
		*out = append(*out, FieldError{Field: fieldOf(path), Message: fmt.Sprintf(format, args...)})
	}
	switch k := e.ErrorKind.(type) {
	case *kind.Schema, *kind.Group, *kind.AllOf, *kind.Reference:
		if len(e.Causes) == 0 {
			add("is not valid")
		}
		for _, c := range e.Causes {
			collect(c, inst, out)
		}
	case *kind.AnyOf:
		if types := branchTypes(e.Causes); types != nil {
			add("must be %s", typePhrase(types))
		} else {
			add("must match at least one of the schemas in anyOf (it matches none)")
		}
	case *kind.OneOf:
		switch {
		case len(k.Subschemas) >= 2:
			add("must match exactly one of the schemas in oneOf, but matches oneOf[%d] and oneOf[%d]", k.Subschemas[0], k.Subschemas[1])
		case branchTypes(e.Causes) != nil:
			add("must be %s", typePhrase(branchTypes(e.Causes)))
		default:
			add("must match exactly one of the schemas in oneOf (it matches none)")
		}
	case *kind.Not:
		add("must not match the schema in not")
	case *kind.FalseSchema:
		add("is not allowed")
	case *kind.Type:
		add("must be %s", typePhrase(k.Want))
	case *kind.Const:
		add("must be %s", jsonText(k.Want))
	case *kind.Enum:
		vals := make([]string, len(k.Want))
		for i, w := range k.Want {
			vals[i] = jsonText(w)
		}
		add("must be one of: %s", strings.Join(vals, ", "))
	case *kind.Format:
		add("%s", formatMessage(k.Want))
	case *kind.Required:
		for _, name := range k.Missing {
			*out = append(*out, FieldError{Field: join(path, name), Message: "is required"})
		}
	case *kind.DependentRequired:
		for _, name := range k.Missing {
			*out = append(*out, FieldError{Field: join(path, name), Message: fmt.Sprintf("is required when %s is present", k.Prop)})
		}
	case *kind.Dependency:
		for _, name := range k.Missing {
			*out = append(*out, FieldError{Field: join(path, name), Message: fmt.Sprintf("is required when %s is present", k.Prop)})
		}
	case *kind.AdditionalProperties:
		for _, name := range k.Properties {
			*out = append(*out, FieldError{Field: join(path, name), Message: "is not allowed"})
		}
	case *kind.PropertyNames:
		var sub []FieldError
		for _, c := range e.Causes {
			collect(c, k.Property, &sub)
		}
		if len(sub) == 0 {
			sub = []FieldError{{Message: "is not valid"}}
		}
		for _, fe := range sub {
			*out = append(*out, FieldError{Field: join(path, k.Property), Message: "is not an allowed property name: it " + fe.Message})
		}
	case *kind.MinProperties:
		add("must have at least %s", plural(k.Want, "property", "properties"))
	case *kind.MaxProperties:
		add("must have at most %s", plural(k.Want, "property", "properties"))
	case *kind.MinItems:
		add("must have at least %s", plural(k.Want, "item", "items"))
	case *kind.MaxItems:
		add("must have at most %s", plural(k.Want, "item", "items"))
	case *kind.AdditionalItems:
		add("has %s too many", plural(k.Count, "item", "items"))
	case *kind.UniqueItems:
		add("must not hold the same item twice (items %d and %d are equal)", k.Duplicates[0], k.Duplicates[1])
	case *kind.Contains:
		add("must hold at least one item that matches contains")
	case *kind.MinContains:
		add("must hold at least %s that match contains (it holds %d)", plural(k.Want, "item", "items"), len(k.Got))
	case *kind.MaxContains:
		add("must hold at most %s that match contains (it holds %d)", plural(k.Want, "item", "items"), len(k.Got))
	case *kind.MinLength:
		if k.Want == 1 {
			add("must not be empty")
		} else {
			add("must be at least %s", plural(k.Want, "character", "characters"))
		}
	case *kind.MaxLength:
		add("must be at most %s", plural(k.Want, "character", "characters"))
	case *kind.Pattern:
		add("must match the pattern %s", k.Want)
	case *kind.Minimum:
		add("must be at least %s", ratText(k.Want))
	case *kind.Maximum:
		add("must be at most %s", ratText(k.Want))
	case *kind.ExclusiveMinimum:
		add("must be greater than %s", ratText(k.Want))
	case *kind.ExclusiveMaximum:
		add("must be less than %s", ratText(k.Want))
	case *kind.MultipleOf:
		add("must be a multiple of %s", ratText(k.Want))
	case *kind.InvalidJsonValue:
		add("is not a JSON value (%T)", k.Value)
	default:
		add("%s", cleanMessage(e.ErrorKind.LocalizedString(english)))
	}
}

// branchTypes returns the types wanted by the branches of an anyOf or oneOf when each failed only
// for its type (anyOf: [{type: string}, {type: integer}]); nil otherwise.
func branchTypes(causes []*jsonschema.ValidationError) []string {
	var types []string
	for _, c := range causes {
		t, ok := c.ErrorKind.(*kind.Type)
		if !ok || len(c.Causes) > 0 {
			return nil
		}
		types = append(types, t.Want...)
	}
	return types
}

func typePhrase(types []string) string {
	var words []string
	for _, t := range typeNames { // in a fixed order, without repeats
		if !slices.Contains(types, t) {
			continue
		}
		switch t {
		case TypeObject:
			words = append(words, "an object")
		case TypeArray:
			words = append(words, "an array")
		case TypeInteger:
			words = append(words, "an integer")
		case TypeNull:
			words = append(words, "null")
		default:
			words = append(words, "a "+t)
		}
	}
	if slices.Contains(types, TypeNumber) && slices.Contains(types, TypeInteger) {
		words = slices.DeleteFunc(words, func(w string) bool { return w == "an integer" }) // implied
	}
	return strings.Join(words, " or ")
}

func formatMessage(format string) string {
	switch format {
	case "email":
		return "must be a valid email address"
	case "uri", "iri":
		return "must be a valid absolute URI"
	case "uri-reference", "iri-reference":
		return "must be a valid URI reference"
	case "date-time":
		return "must be a valid date-time (RFC 3339, e.g. 2024-01-31T12:00:00Z)"
	case "date":
		return "must be a valid date (RFC 3339, e.g. 2024-01-31)"
	case "time":
		return "must be a valid time (RFC 3339, e.g. 12:00:00Z)"
	case "duration":
		return "must be a valid duration (ISO 8601, e.g. P1DT2H)"
	case "uuid":
		return "must be a valid UUID"
	case "ipv4":
		return "must be a valid IPv4 address"
	case "ipv6":
		return "must be a valid IPv6 address"
	case "regex":
		return "must be a valid regular expression"
	}
	return "must be a valid " + format
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func jsonText(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSpace(buf.String())
}

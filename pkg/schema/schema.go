// Package schema validates feature input against a subset of JSON Schema.
//
// Supported keywords: type (a name or a list of names among object, array, string, integer, number,
// boolean, null), properties, required, additionalProperties (boolean only), items, minItems,
// maxItems, minLength and maxLength (counted in characters, i.e. Unicode code points), minimum,
// maximum, exclusiveMinimum and exclusiveMaximum (numbers), enum, const, pattern (Go regexp syntax,
// unanchored), format (email, uri and date-time are checked; other formats are accepted and ignored),
// and the annotations description, title, default, examples, $schema and $comment, which validation
// ignores. Any other keyword is a compile error, so that a typo such as "minLenght" does not silently
// disable a check.
package schema

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// RootField is the FieldError.Field of an error about the whole value.
const RootField = "$"

// Type names accepted by the type keyword.
const (
	TypeObject  = "object"
	TypeArray   = "array"
	TypeString  = "string"
	TypeInteger = "integer"
	TypeNumber  = "number"
	TypeBoolean = "boolean"
	TypeNull    = "null"
)

var typeNames = []string{TypeObject, TypeArray, TypeString, TypeInteger, TypeNumber, TypeBoolean, TypeNull}

// Schema is a compiled JSON Schema subset document; it is immutable and safe for concurrent use.
type Schema struct {
	doc any // the document it was compiled from, returned by MarshalJSON

	types      []string // nil: any type
	properties map[string]*Schema
	required   []string
	additional *bool
	items      *Schema

	minItems, maxItems   *int
	minLength, maxLength *int

	minimum, maximum, exclusiveMinimum, exclusiveMaximum *decimal

	enum     []any
	hasConst bool
	constVal any
	pattern  *regexp.Regexp
	format   string
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

// Compile checks a schema document decoded from YAML or JSON and compiles it. Every problem found is
// reported as a *CompileError; several are joined with errors.Join.
func Compile(v any) (*Schema, error) {
	c := &compiler{}
	s := c.compile("", v)
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	return s, nil
}

// MustCompile is Compile that panics on error, for tests and literals known to be valid.
func MustCompile(v any) *Schema {
	s, err := Compile(v)
	if err != nil {
		panic(err)
	}
	return s
}

// MarshalJSON returns the document the schema was compiled from.
func (s *Schema) MarshalJSON() ([]byte, error) {
	if s == nil {
		return []byte("null"), nil
	}
	return json.Marshal(s.doc)
}

// Document returns the document the schema was compiled from.
func (s *Schema) Document() any {
	if s == nil {
		return nil
	}
	return s.doc
}

type compiler struct{ errs []error }

func (c *compiler) errorf(path, format string, args ...any) {
	c.errs = append(c.errs, &CompileError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (c *compiler) compile(path string, v any) *Schema {
	m, ok := v.(map[string]any)
	if !ok {
		c.errorf(path, "must be a schema object, got %s", describe(v))
		return nil
	}
	s := &Schema{doc: v}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val, p := m[k], join(path, k)
		switch k {
		case "type":
			s.types = c.types(p, val)
		case "properties":
			pm, ok := val.(map[string]any)
			if !ok {
				c.errorf(p, "must be an object mapping property names to schemas, got %s", describe(val))
				continue
			}
			s.properties = make(map[string]*Schema, len(pm))
			for name, sub := range pm {
				s.properties[name] = c.compile(join(p, name), sub)
			}
		case "required":
			s.required = c.stringList(p, val)
		case "additionalProperties":
			b, ok := val.(bool)
			if !ok {
				c.errorf(p, "must be true or false, got %s", describe(val))
				continue
			}
			s.additional = &b
		case "items":
			s.items = c.compile(p, val)
		case "minItems":
			s.minItems = c.count(p, val)
		case "maxItems":
			s.maxItems = c.count(p, val)
		case "minLength":
			s.minLength = c.count(p, val)
		case "maxLength":
			s.maxLength = c.count(p, val)
		case "minimum":
			s.minimum = c.number(p, val)
		case "maximum":
			s.maximum = c.number(p, val)
		case "exclusiveMinimum":
			s.exclusiveMinimum = c.number(p, val)
		case "exclusiveMaximum":
			s.exclusiveMaximum = c.number(p, val)
		case "enum":
			l, ok := val.([]any)
			if !ok || len(l) == 0 {
				c.errorf(p, "must be a non-empty list of values, got %s", describe(val))
				continue
			}
			s.enum = l
		case "const":
			s.hasConst, s.constVal = true, val
		case "pattern":
			str, ok := val.(string)
			if !ok {
				c.errorf(p, "must be a string (a regular expression), got %s", describe(val))
				continue
			}
			re, err := regexp.Compile(str)
			if err != nil {
				c.errorf(p, "invalid regular expression: %v", err)
				continue
			}
			s.pattern = re
		case "format":
			str, ok := val.(string)
			if !ok {
				c.errorf(p, "must be a string, got %s", describe(val))
				continue
			}
			s.format = str
		case "description", "title", "$comment":
			if _, ok := val.(string); !ok {
				c.errorf(p, "must be a string, got %s", describe(val))
			}
		case "default", "examples", "$schema":
			// Annotations: ignored by validation.
		default:
			c.errorf(p, "unknown keyword (expected one of: %s)", strings.Join(keywords, ", "))
		}
	}
	if s.minItems != nil && s.maxItems != nil && *s.minItems > *s.maxItems {
		c.errorf(join(path, "minItems"), "must not be greater than maxItems (%d > %d)", *s.minItems, *s.maxItems)
	}
	if s.minLength != nil && s.maxLength != nil && *s.minLength > *s.maxLength {
		c.errorf(join(path, "minLength"), "must not be greater than maxLength (%d > %d)", *s.minLength, *s.maxLength)
	}
	if s.minimum != nil && s.maximum != nil && s.minimum.cmp(*s.maximum) > 0 {
		c.errorf(join(path, "minimum"), "must not be greater than maximum (%s > %s)", s.minimum, s.maximum)
	}
	return s
}

var keywords = []string{
	"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
	"minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum",
	"const", "pattern", "format", "description", "title", "default", "examples", "$schema", "$comment",
}

func (c *compiler) types(path string, v any) []string {
	var names []any
	switch x := v.(type) {
	case string:
		names = []any{x}
	case []any:
		if len(x) == 0 {
			c.errorf(path, "must not be an empty list")
			return nil
		}
		names = x
	default:
		c.errorf(path, "must be a type name or a list of type names, got %s", describe(v))
		return nil
	}
	out := make([]string, 0, len(names))
	for i, n := range names {
		p := path
		if _, isList := v.([]any); isList {
			p = fmt.Sprintf("%s[%d]", path, i)
		}
		s, ok := n.(string)
		if !ok || !contains(typeNames, s) {
			c.errorf(p, "unknown type %s (expected one of: %s)", describe(n), strings.Join(typeNames, ", "))
			continue
		}
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func (c *compiler) stringList(path string, v any) []string {
	l, ok := v.([]any)
	if !ok {
		c.errorf(path, "must be a list of property names, got %s", describe(v))
		return nil
	}
	out := make([]string, 0, len(l))
	for i, e := range l {
		s, ok := e.(string)
		if !ok {
			c.errorf(fmt.Sprintf("%s[%d]", path, i), "must be a string, got %s", describe(e))
			continue
		}
		if contains(out, s) {
			c.errorf(fmt.Sprintf("%s[%d]", path, i), "duplicate property %q", s)
			continue
		}
		out = append(out, s)
	}
	return out
}

func (c *compiler) count(path string, v any) *int {
	d, ok := toDecimal(v)
	if !ok || !d.isInt() {
		c.errorf(path, "must be a non-negative integer, got %s", describe(v))
		return nil
	}
	if d.neg || d.exp > 10 {
		c.errorf(path, "must be a non-negative integer, got %s", d)
		return nil
	}
	n, err := strconv.ParseInt(d.String(), 10, 64)
	if err != nil || n > int64(^uint32(0)>>1) {
		c.errorf(path, "must be a non-negative integer, got %s", d)
		return nil
	}
	i := int(n)
	return &i
}

func (c *compiler) number(path string, v any) *decimal {
	d, ok := toDecimal(v)
	if !ok {
		c.errorf(path, "must be a number, got %s", describe(v))
		return nil
	}
	return &d
}

// Validate checks v, a value decoded by encoding/json into any (with or without UseNumber), and
// returns every problem found, sorted by field then message; nil means v is valid. A nil Schema
// accepts everything.
func (s *Schema) Validate(v any) []FieldError {
	if s == nil {
		return nil
	}
	var errs []FieldError
	s.validate("", v, &errs)
	sort.SliceStable(errs, func(i, j int) bool {
		if errs[i].Field != errs[j].Field {
			return errs[i].Field < errs[j].Field
		}
		return errs[i].Message < errs[j].Message
	})
	return errs
}

func (s *Schema) validate(path string, v any, errs *[]FieldError) {
	field := path
	if field == "" {
		field = RootField
	}
	add := func(format string, args ...any) {
		*errs = append(*errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}

	kind := kindOf(v)
	if s.types != nil && !typeMatches(s.types, kind, v) {
		add("must be %s", typePhrase(s.types))
		return // other keywords would only repeat the problem
	}
	if s.hasConst && !jsonEqual(v, s.constVal) {
		add("must be %s", jsonText(s.constVal))
	}
	if s.enum != nil {
		found := false
		for _, e := range s.enum {
			if jsonEqual(v, e) {
				found = true
				break
			}
		}
		if !found {
			vals := make([]string, len(s.enum))
			for i, e := range s.enum {
				vals[i] = jsonText(e)
			}
			add("must be one of: %s", strings.Join(vals, ", "))
		}
	}

	switch kind {
	case TypeString:
		str := v.(string)
		n := utf8.RuneCountInString(str)
		if s.minLength != nil && n < *s.minLength {
			if *s.minLength == 1 {
				add("must not be empty")
			} else {
				add("must be at least %s", plural(*s.minLength, "character"))
			}
		}
		if s.maxLength != nil && n > *s.maxLength {
			add("must be at most %s", plural(*s.maxLength, "character"))
		}
		if s.pattern != nil && !s.pattern.MatchString(str) {
			add("must match the pattern %s", s.pattern.String())
		}
		if msg := checkFormat(s.format, str); msg != "" {
			add("%s", msg)
		}
	case TypeNumber:
		d, _ := toDecimal(v)
		if s.minimum != nil && d.cmp(*s.minimum) < 0 {
			add("must be at least %s", s.minimum)
		}
		if s.maximum != nil && d.cmp(*s.maximum) > 0 {
			add("must be at most %s", s.maximum)
		}
		if s.exclusiveMinimum != nil && d.cmp(*s.exclusiveMinimum) <= 0 {
			add("must be greater than %s", s.exclusiveMinimum)
		}
		if s.exclusiveMaximum != nil && d.cmp(*s.exclusiveMaximum) >= 0 {
			add("must be less than %s", s.exclusiveMaximum)
		}
	case TypeArray:
		l := reflect.ValueOf(v)
		n := l.Len()
		if s.minItems != nil && n < *s.minItems {
			add("must have at least %s", plural(*s.minItems, "item"))
		}
		if s.maxItems != nil && n > *s.maxItems {
			add("must have at most %s", plural(*s.maxItems, "item"))
		}
		if s.items != nil {
			for i := range n {
				s.items.validate(fmt.Sprintf("%s[%d]", path, i), l.Index(i).Interface(), errs)
			}
		}
	case TypeObject:
		m := v.(map[string]any)
		for _, name := range s.required {
			if _, ok := m[name]; !ok {
				*errs = append(*errs, FieldError{Field: join(path, name), Message: "is required"})
			}
		}
		for name, val := range m {
			if sub, ok := s.properties[name]; ok {
				if sub != nil {
					sub.validate(join(path, name), val, errs)
				}
				continue
			}
			if s.additional != nil && !*s.additional {
				*errs = append(*errs, FieldError{Field: join(path, name), Message: "is not allowed"})
			}
		}
	}
}

func checkFormat(format, s string) string {
	switch format {
	case "email":
		a, err := mail.ParseAddress(s)
		if err != nil || a.Address != s || a.Name != "" {
			return "must be a valid email address"
		}
	case "uri":
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" || strings.ContainsAny(s, " \t\r\n") {
			return "must be a valid absolute URI"
		}
	case "date-time":
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			return "must be a valid date-time (RFC 3339, e.g. 2024-01-31T12:00:00Z)"
		}
	}
	return ""
}

// kindOf returns the JSON type of v; integers are reported as TypeNumber.
func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return TypeNull
	case string:
		return TypeString
	case bool:
		return TypeBoolean
	case map[string]any:
		return TypeObject
	case []any:
		return TypeArray
	}
	if _, ok := toDecimal(v); ok {
		return TypeNumber
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice {
		return TypeArray
	}
	return "unknown"
}

func typeMatches(types []string, kind string, v any) bool {
	for _, t := range types {
		switch {
		case t == kind:
			return true
		case t == TypeInteger && kind == TypeNumber:
			if d, _ := toDecimal(v); d.isInt() {
				return true
			}
		}
	}
	return false
}

func typePhrase(types []string) string {
	words := make([]string, len(types))
	for i, t := range types {
		switch t {
		case TypeObject:
			words[i] = "an object"
		case TypeArray:
			words[i] = "an array"
		case TypeInteger:
			words[i] = "an integer"
		case TypeNull:
			words[i] = "null"
		default:
			words[i] = "a " + t
		}
	}
	return strings.Join(words, " or ")
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// decimal is a number, exactly: ±0.DIGITS × 10^exp, with neither leading nor trailing zeros in
// digits; zero has no digits. Any JSON number converts to one in time linear in its length, however
// large its exponent (math/big would compute 10^999999 for 1e999999, 60ms for each such number of
// an input).
type decimal struct {
	neg    bool
	digits string
	exp    int64
}

// maxExponent bounds the exponents of decimals: a JSON number whose exponent has more than 17 digits
// compares as if it were 1e±10^17, far beyond anything a backend stores.
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

// toDecimal converts any numeric value (json.Number, float64, Go integers) to a decimal. A float is
// taken as the shortest decimal that rounds to it, which is what was written where it came from: a
// schema's "minimum: 0.1" (a float64 once decoded from YAML) is 0.1, as an input's 0.1 is.
func toDecimal(v any) (decimal, bool) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = string(x)
	case float64:
		s = strconv.FormatFloat(x, 'g', -1, 64) // NaN and infinities do not parse
	case float32:
		s = strconv.FormatFloat(float64(x), 'g', -1, 32)
	case int:
		s = strconv.FormatInt(int64(x), 10)
	case int8:
		s = strconv.FormatInt(int64(x), 10)
	case int16:
		s = strconv.FormatInt(int64(x), 10)
	case int32:
		s = strconv.FormatInt(int64(x), 10)
	case int64:
		s = strconv.FormatInt(x, 10)
	case uint:
		s = strconv.FormatUint(uint64(x), 10)
	case uint8:
		s = strconv.FormatUint(uint64(x), 10)
	case uint16:
		s = strconv.FormatUint(uint64(x), 10)
	case uint32:
		s = strconv.FormatUint(uint64(x), 10)
	case uint64:
		s = strconv.FormatUint(x, 10)
	default:
		return decimal{}, false
	}
	return parseDecimal(s)
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

// jsonEqual compares two JSON values: numbers by value, objects and arrays element by element.
func jsonEqual(a, b any) bool {
	if da, ok := toDecimal(a); ok {
		db, ok := toDecimal(b)
		return ok && da.cmp(db) == 0
	}
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !jsonEqual(xv, yv) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
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

func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("%q", x)
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	}
	return jsonText(v)
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

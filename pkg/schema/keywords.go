package schema

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The validator ignores keywords it does not know, as JSON Schema says, so a typo ("minLenght")
// would silently disable a check. Compile therefore walks the document first, keyword by keyword,
// against the draft 2020-12 vocabularies, and checks the shape of each value with messages that
// name the keyword's path; the validator's own check against the metaschema comes after.

// kwKind is what a keyword's value must be.
type kwKind int

const (
	kwSchema            kwKind = iota // a schema (an object, true or false)
	kwSchemaMap                       // an object whose values are schemas
	kwSchemaList                      // a non-empty list of schemas
	kwCount                           // a non-negative integer
	kwNumber                          // a number
	kwMultipleOf                      // a number greater than 0
	kwType                            // a type name or a list of them
	kwConst                           // any value
	kwEnum                            // a non-empty list of values
	kwRequired                        // a list of distinct property names
	kwDependentRequired               // an object whose values are lists of property names
	kwBool                            // true or false
	kwString                          // a string
	kwPattern                         // a regular expression
	kwFormat                          // a format name
	kwRef                             // a reference inside this document
	kwAnchor                          // an anchor name
	kwRootOnly                        // $schema and $id: only at the root
	kwAny                             // default: any value
	kwList                            // examples: a list of values
)

// keywords are those of JSON Schema draft 2020-12 (core, applicator, unevaluated, validation,
// format, content and meta-data vocabularies), but $vocabulary, which only a metaschema uses.
var keywords = map[string]kwKind{
	// core
	"$schema": kwRootOnly, "$id": kwRootOnly, "$ref": kwRef, "$dynamicRef": kwRef,
	"$anchor": kwAnchor, "$dynamicAnchor": kwAnchor, "$defs": kwSchemaMap, "$comment": kwString,
	// applicator
	"prefixItems": kwSchemaList, "items": kwSchema, "contains": kwSchema,
	"additionalProperties": kwSchema, "properties": kwSchemaMap, "patternProperties": kwSchemaMap,
	"dependentSchemas": kwSchemaMap, "propertyNames": kwSchema, "if": kwSchema, "then": kwSchema,
	"else": kwSchema, "allOf": kwSchemaList, "anyOf": kwSchemaList, "oneOf": kwSchemaList,
	"not": kwSchema,
	// unevaluated
	"unevaluatedItems": kwSchema, "unevaluatedProperties": kwSchema,
	// validation
	"type": kwType, "const": kwConst, "enum": kwEnum, "multipleOf": kwMultipleOf,
	"maximum": kwNumber, "exclusiveMaximum": kwNumber, "minimum": kwNumber, "exclusiveMinimum": kwNumber,
	"maxLength": kwCount, "minLength": kwCount, "pattern": kwPattern, "maxItems": kwCount,
	"minItems": kwCount, "uniqueItems": kwBool, "maxContains": kwCount, "minContains": kwCount,
	"maxProperties": kwCount, "minProperties": kwCount, "required": kwRequired,
	"dependentRequired": kwDependentRequired,
	// format
	"format": kwFormat,
	// content (annotations: not asserted)
	"contentEncoding": kwString, "contentMediaType": kwString, "contentSchema": kwSchema,
	// meta-data
	"title": kwString, "description": kwString, "default": kwAny, "deprecated": kwBool,
	"readOnly": kwBool, "writeOnly": kwBool, "examples": kwList,
}

// sameValue lists the applicators whose subschemas apply to the value itself (not to its items or
// properties): a loop through them and references would never end.
var sameValue = map[string]bool{
	"allOf": true, "anyOf": true, "oneOf": true, "not": true, "if": true, "then": true, "else": true,
	"dependentSchemas": true,
}

// renamed are keywords of other drafts, with what draft 2020-12 says instead.
var renamed = map[string]string{
	"definitions":      "$defs",
	"dependencies":     "dependentRequired or dependentSchemas",
	"additionalItems":  "items (with prefixItems for the first items)",
	"$recursiveRef":    "$dynamicRef",
	"$recursiveAnchor": "$dynamicAnchor",
	"nullable":         `type: [..., "null"]`,
}

// Draft2020 is the metaschema URI a schema's $schema may name: the only draft supported.
const Draft2020 = "https://json-schema.org/draft/2020-12/schema"

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

// formatNames are the formats checked: the validator's, all asserted.
var formatNames = []string{
	"date", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "iri", "iri-reference",
	"json-pointer", "period", "regex", "relative-json-pointer", "semver", "time", "uri",
	"uri-reference", "uri-template", "uuid",
}

var anchorName = regexp.MustCompile(`^[A-Za-z_][-A-Za-z0-9._]*$`)

// compiler collects what the walk finds.
type compiler struct {
	errs     []error
	lim      numberLimits
	pointers map[string]string // JSON pointer of every schema of the document -> its path
	anchors  map[string]string // $anchor and $dynamicAnchor names -> JSON pointer of their schema
	refs     []refUse
	edges    map[string][]edge // schema -> the schemas that apply to the same value
}

type refUse struct {
	path, owner, value string
}

type edge struct {
	to  string
	ref string // path of the $ref keyword, "" for an applicator
}

func (c *compiler) errorf(path, format string, args ...any) {
	c.errs = append(c.errs, &CompileError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func escapePointer(tok string) string {
	return strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
}

// toJSON converts a document decoded from YAML or JSON to JSON values: map[string]any, []any,
// string, bool, nil, and json.Number for every number (a float as encoding/json writes it, which is
// the shortest decimal that rounds to it).
func (c *compiler) toJSON(path string, v any) (any, bool) {
	switch x := v.(type) {
	case nil, bool, string:
		return x, true
	case json.Number:
		if _, ok := parseDecimal(string(x)); !ok {
			c.errorf(path, "invalid number %q", string(x))
			return nil, false
		}
		return x, true
	case float64, float32:
		s, ok := numberText(x)
		if !ok {
			c.errorf(path, "invalid number %v (JSON has no NaN or infinity)", x)
			return nil, false
		}
		b, err := json.Marshal(x)
		if err != nil {
			b = []byte(s)
		}
		return json.Number(b), true
	case map[string]any:
		out := make(map[string]any, len(x))
		ok := true
		for k, e := range x {
			var eok bool
			out[k], eok = c.toJSON(join(path, k), e)
			ok = ok && eok
		}
		return out, ok
	case map[any]any:
		out := make(map[string]any, len(x))
		ok := true
		for k, e := range x {
			ks, isString := k.(string)
			if !isString {
				c.errorf(path, "keys must be strings, got %v", k)
				ok = false
				continue
			}
			var eok bool
			out[ks], eok = c.toJSON(join(path, ks), e)
			ok = ok && eok
		}
		return out, ok
	case []any:
		out := make([]any, len(x))
		ok := true
		for i, e := range x {
			var eok bool
			out[i], eok = c.toJSON(index(path, i), e)
			ok = ok && eok
		}
		return out, ok
	}
	if s, ok := numberText(v); ok { // Go integers
		return json.Number(s), true
	}
	c.errorf(path, "unsupported value (%T): only JSON values", v)
	return nil, false
}

// schema checks the schema v found at path (JSON pointer ptr).
func (c *compiler) schema(path, ptr string, v any, root bool) {
	c.pointers[ptr] = path
	if _, ok := v.(bool); ok && !root {
		return // true accepts everything, false nothing
	}
	m, ok := v.(map[string]any)
	if !ok {
		if root {
			c.errorf(path, "must be a schema object, got %s", describe(v))
		} else {
			c.errorf(path, "must be a schema (an object, or true or false), got %s", describe(v))
		}
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	counts := map[string]int{}
	numbers := map[string]decimal{}
	for _, k := range keys {
		val, p, kp := m[k], join(path, k), ptr+"/"+escapePointer(k)
		kind, known := keywords[k]
		if !known {
			c.errorf(p, "unknown keyword%s", suggest(k))
			continue
		}
		switch kind {
		case kwSchema:
			if k == "items" {
				if _, isList := val.([]any); isList {
					c.errorf(p, "must be a schema (an object, or true or false), got a list (a list of schemas, one per position, is prefixItems)")
					continue
				}
			}
			c.schema(p, kp, val, false)
			if sameValue[k] {
				c.edges[ptr] = append(c.edges[ptr], edge{to: kp})
			}
		case kwSchemaMap:
			sm, ok := val.(map[string]any)
			if !ok {
				what := map[string]string{"properties": "property names", "dependentSchemas": "property names", "patternProperties": "regular expressions"}[k]
				if what == "" {
					what = "names"
				}
				c.errorf(p, "must be an object mapping %s to schemas, got %s", what, describe(val))
				continue
			}
			for _, name := range sortedKeys(sm) {
				if k == "patternProperties" {
					if _, err := regexp.Compile(name); err != nil {
						c.errorf(join(p, name), "invalid regular expression: %v", err)
						continue
					}
				}
				sp := kp + "/" + escapePointer(name)
				c.schema(join(p, name), sp, sm[name], false)
				if sameValue[k] {
					c.edges[ptr] = append(c.edges[ptr], edge{to: sp})
				}
			}
		case kwSchemaList:
			l, ok := val.([]any)
			if !ok || len(l) == 0 {
				c.errorf(p, "must be a non-empty list of schemas, got %s", describe(val))
				continue
			}
			for i, sub := range l {
				sp := kp + "/" + strconv.Itoa(i)
				c.schema(index(p, i), sp, sub, false)
				if sameValue[k] {
					c.edges[ptr] = append(c.edges[ptr], edge{to: sp})
				}
			}
		case kwCount:
			if n, ok := c.count(p, val); ok {
				counts[k] = n
			}
		case kwNumber, kwMultipleOf:
			d, ok := c.number(p, val, kind == kwMultipleOf)
			if !ok {
				continue
			}
			if kind == kwMultipleOf && d.sign() <= 0 {
				c.errorf(p, "must be greater than 0, got %s", d)
				continue
			}
			numbers[k] = d
		case kwType:
			c.types(p, val)
		case kwConst:
			c.values(p, val)
		case kwEnum:
			l, ok := val.([]any)
			if !ok || len(l) == 0 {
				c.errorf(p, "must be a non-empty list of values, got %s", describe(val))
				continue
			}
			c.values(p, val)
		case kwRequired:
			c.stringList(p, val)
		case kwDependentRequired:
			dm, ok := val.(map[string]any)
			if !ok {
				c.errorf(p, "must be an object mapping property names to lists of property names, got %s", describe(val))
				continue
			}
			for _, name := range sortedKeys(dm) {
				c.stringList(join(p, name), dm[name])
			}
		case kwBool:
			b, ok := val.(bool)
			if !ok {
				c.errorf(p, "must be true or false, got %s", describe(val))
				continue
			}
			if k == "uniqueItems" && b {
				c.lim.uniqueItems = true
			}
		case kwString:
			c.str(p, val)
		case kwPattern:
			s, ok := val.(string)
			if !ok {
				c.errorf(p, "must be a string (a regular expression), got %s", describe(val))
				continue
			}
			if _, err := regexp.Compile(s); err != nil {
				c.errorf(p, "invalid regular expression: %v", err)
			}
		case kwFormat:
			s, ok := c.str(p, val)
			if ok && !slices.Contains(formatNames, s) {
				c.errorf(p, "unknown format %q (expected one of: %s)", s, strings.Join(formatNames, ", "))
			}
		case kwRef:
			if s, ok := c.str(p, val); ok {
				c.refs = append(c.refs, refUse{path: p, owner: ptr, value: s})
			}
		case kwAnchor:
			s, ok := c.str(p, val)
			if !ok {
				continue
			}
			if !anchorName.MatchString(s) {
				c.errorf(p, "must be a name (a letter or _, then letters, digits, -, _ or .), got %q", s)
				continue
			}
			if prev, dup := c.anchors[s]; dup && prev != ptr {
				c.errorf(p, "anchor %q is already defined at #%s", s, prev)
				continue
			}
			c.anchors[s] = ptr
		case kwRootOnly:
			if !root {
				c.errorf(p, "only allowed at the root of the schema (the schema is one document; use $defs and $ref)")
				continue
			}
			s, ok := c.str(p, val)
			if ok && k == "$schema" && strings.TrimSuffix(s, "#") != Draft2020 {
				c.errorf(p, "must be %q (the only draft supported), got %q", Draft2020, s)
			}
		case kwAny:
		case kwList:
			if _, ok := val.([]any); !ok {
				c.errorf(p, "must be a list of values, got %s", describe(val))
			}
		}
	}
	for _, pair := range [][2]string{{"minLength", "maxLength"}, {"minItems", "maxItems"}, {"minProperties", "maxProperties"}, {"minContains", "maxContains"}} {
		lo, okLo := counts[pair[0]]
		hi, okHi := counts[pair[1]]
		if okLo && okHi && lo > hi {
			c.errorf(join(path, pair[0]), "must not be greater than %s (%d > %d)", pair[1], lo, hi)
		}
	}
	if lo, ok := numbers["minimum"]; ok {
		if hi, ok := numbers["maximum"]; ok && lo.cmp(hi) > 0 {
			c.errorf(join(path, "minimum"), "must not be greater than maximum (%s > %s)", lo, hi)
		}
	}
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (c *compiler) str(path string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		c.errorf(path, "must be a string, got %s", describe(v))
	}
	return s, ok
}

func (c *compiler) types(path string, v any) {
	var names []any
	switch x := v.(type) {
	case string:
		names = []any{x}
	case []any:
		if len(x) == 0 {
			c.errorf(path, "must not be an empty list")
			return
		}
		names = x
	default:
		c.errorf(path, "must be a type name or a list of type names, got %s", describe(v))
		return
	}
	var seen []string
	for i, n := range names {
		p := path
		if _, isList := v.([]any); isList {
			p = index(path, i)
		}
		s, ok := n.(string)
		if !ok || !slices.Contains(typeNames, s) {
			c.errorf(p, "unknown type %s (expected one of: %s)", describe(n), strings.Join(typeNames, ", "))
			continue
		}
		if slices.Contains(seen, s) {
			c.errorf(p, "duplicate type %q", s)
			continue
		}
		seen = append(seen, s)
	}
}

func (c *compiler) stringList(path string, v any) {
	l, ok := v.([]any)
	if !ok {
		c.errorf(path, "must be a list of property names, got %s", describe(v))
		return
	}
	seen := make([]string, 0, len(l))
	for i, e := range l {
		s, ok := e.(string)
		if !ok {
			c.errorf(index(path, i), "must be a string, got %s", describe(e))
			continue
		}
		if slices.Contains(seen, s) {
			c.errorf(index(path, i), "duplicate property %q", s)
			continue
		}
		seen = append(seen, s)
	}
}

func (c *compiler) count(path string, v any) (int, bool) {
	d, ok := toDecimal(v)
	if !ok || !d.isInt() || d.neg || d.exp > 10 {
		c.errorf(path, "must be a non-negative integer, got %s", describe(v))
		return 0, false
	}
	n, err := strconv.ParseInt(d.String(), 10, 64)
	if err != nil || n > int64(^uint32(0)>>1) {
		c.errorf(path, "must be a non-negative integer below 2^31, got %s", d)
		return 0, false
	}
	return int(n), true
}

// number checks a number the validator compares input with, and widens the limits for it.
func (c *compiler) number(path string, v any, mult bool) (decimal, bool) {
	d, ok := toDecimal(v)
	if !ok {
		c.errorf(path, "must be a number, got %s", describe(v))
		return decimal{}, false
	}
	if !c.noteNumber(path, d, mult) {
		return decimal{}, false
	}
	return d, true
}

func (c *compiler) noteNumber(path string, d decimal, mult bool) bool {
	if len(d.digits) > maxSchemaDigits || d.exp > maxSchemaExponent || d.exp < -maxSchemaExponent {
		c.errorf(path, "number out of range (at most %d digits, between 1e-%d and 1e%d)", maxSchemaDigits, maxSchemaExponent, maxSchemaExponent)
		return false
	}
	c.lim.noteNumber(d, mult)
	return true
}

// values notes every number of a const or enum value.
func (c *compiler) values(path string, v any) {
	switch x := v.(type) {
	case json.Number:
		d, _ := parseDecimal(string(x))
		c.noteNumber(path, d, false)
	case map[string]any:
		for _, k := range sortedKeys(x) {
			c.values(join(path, k), x[k])
		}
	case []any:
		for i, e := range x {
			c.values(index(path, i), e)
		}
	}
}

// checkRefs resolves every $ref and $dynamicRef: only to a schema of this document, by a JSON
// pointer (#/$defs/name) or an anchor (#name). Nothing is ever loaded from elsewhere.
func (c *compiler) checkRefs() {
	for _, r := range c.refs {
		frag, local := strings.CutPrefix(r.value, "#")
		if !local {
			c.errorf(r.path, "only references inside this schema are allowed (such as \"#/$defs/name\"), got %q", r.value)
			continue
		}
		target, err := url.PathUnescape(frag)
		if err != nil {
			c.errorf(r.path, "invalid reference %q: %v", r.value, err)
			continue
		}
		if target != "" && !strings.HasPrefix(target, "/") {
			ptr, ok := c.anchors[target]
			if !ok {
				c.errorf(r.path, "no $anchor or $dynamicAnchor %q in this schema", target)
				continue
			}
			target = ptr
		} else if _, ok := c.pointers[target]; !ok {
			c.errorf(r.path, "%q does not point to a schema of this document%s", r.value, c.knownDefs())
			continue
		}
		c.edges[r.owner] = append(c.edges[r.owner], edge{to: target, ref: r.path})
	}
}

func (c *compiler) knownDefs() string {
	var defs []string
	for ptr := range c.pointers {
		if name, ok := strings.CutPrefix(ptr, "/$defs/"); ok && !strings.Contains(name, "/") {
			defs = append(defs, "#"+ptr)
		}
	}
	if len(defs) == 0 {
		return " (it has no $defs)"
	}
	sort.Strings(defs)
	return " (its $defs: " + strings.Join(defs, ", ") + ")"
}

// checkLoops refuses references that lead back to where they start without moving into the value
// (a: {$ref: "#/$defs/b"}, b: {allOf: [{$ref: "#/$defs/a"}]}): validation would never end.
func (c *compiler) checkLoops() {
	const (
		unseen = iota
		open
		done
	)
	state := map[string]int{}
	type frame struct {
		ptr string
		via edge
	}
	var stack []frame
	var visit func(ptr string)
	visit = func(ptr string) {
		state[ptr] = open
		for _, e := range c.edges[ptr] {
			switch state[e.to] {
			case open:
				// The loop: from e.to down the stack to ptr, then e back to e.to.
				start := len(stack) - 1
				for start >= 0 && stack[start].ptr != e.to {
					start--
				}
				loop := append(append([]frame(nil), stack[start+1:]...), frame{ptr: e.to, via: e})
				at, names := "", []string{"#" + e.to}
				for _, f := range loop {
					names = append(names, "#"+f.ptr)
					if at == "" && f.via.ref != "" {
						at = f.via.ref
					}
				}
				c.errorf(at, "the references loop without moving into the value (%s): validation would never end", strings.Join(names, " -> "))
			case unseen:
				stack = append(stack, frame{ptr: e.to, via: e})
				visit(e.to)
				stack = stack[:len(stack)-1]
			}
		}
		state[ptr] = done
	}
	for _, ptr := range sortedPointers(c.pointers) {
		if state[ptr] == unseen {
			stack = append(stack[:0], frame{ptr: ptr})
			visit(ptr)
		}
	}
}

func sortedPointers(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// suggest returns " (did you mean X?)" for a keyword close to a known one, or what draft 2020-12
// says instead of a keyword of another draft.
func suggest(k string) string {
	if r, ok := renamed[k]; ok {
		return " (draft 2020-12 says " + r + ")"
	}
	best, bestDist := "", 3
	for _, name := range sortedKwNames {
		if d := distance(strings.ToLower(k), strings.ToLower(name)); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return " (JSON Schema draft 2020-12 keywords only)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

var sortedKwNames = func() []string {
	names := make([]string, 0, len(keywords))
	for k := range keywords {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}()

// distance is the Damerau-Levenshtein (optimal string alignment) distance, bounded for long
// strings: only short keywords get suggestions.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
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

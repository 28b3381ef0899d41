// Package render fills templates that live inside JSON string values.
//
// A request body, a header value or a mock output in the registry is a JSON-compatible value (decoded
// from YAML) whose string values may contain Go text/template actions. Templates never see or produce
// JSON text: each string is rendered on its own and put back in place, so user input can never break
// the structure of the document, and whatever it contains (quotes, newlines, any Unicode) is kept
// exactly. A string that is exactly one action, such as "{{ .input.items }}", yields the value of that
// action itself (an array stays an array, a number stays a number). Inside a longer string, a value
// prints as Stringify does: numbers plainly, null as nothing, objects and arrays as JSON.
//
// Templates are executed against the map built by Data.Map:
//
//	{
//	  "input": <the job's input>,
//	  "steps": {"<name>": {"output": <that step's output>}, ...},  // only steps that have succeeded
//	  "job":   {"id": "<job id>"},
//	  "step":  {"name": "<step name>", "attempt": <1-based attempt>, "run": <run number>},
//	}
//
// Missing keys are errors: "{{ .input.nope }}" or "{{ .steps.later.output }}" fail instead of
// rendering "<no value>". To make a field optional, use index, which yields nil for a missing key:
// "{{ index .input \"nope\" | default \"x\" }}".
package render

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"
)

// Internal template functions, added around the actions of a parsed template.
const (
	captureFunc = "__cao_capture" // hands a single action's value back to Go
	printFunc   = "__cao_print"   // prints an action's value inside a larger string (see Stringify)
)

// templateName names every parsed template; error messages are prefixed with the value path instead.
const templateName = "template"

// Template is a compiled JSON-compatible value whose string values may hold text/template actions.
// It is immutable and safe for concurrent use.
type Template struct {
	root     node
	source   any
	str      bool // compiled by CompileString: Execute yields a string
	hasFuncs bool // at least one string holds an action
}

// PathError is a compile or execute error located at a string inside the value.
type PathError struct {
	// Path locates the string inside the compiled value, e.g. "messages[0].content"; "" is the root.
	Path string
	Err  error // the text/template error
}

// Error returns "path: error", or just the error for the root.
func (e *PathError) Error() string {
	if e.Path == "" {
		return e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}

// Unwrap returns the underlying template error.
func (e *PathError) Unwrap() error { return e.Err }

// Compile parses every string value of v that contains "{{" as a template. v is a JSON-compatible
// value: map[string]any, []any, string, bool, nil, or any Go integer or float (json.Number too).
// Map keys are never templates. The returned error is a *PathError (or several joined) naming where.
func Compile(v any) (*Template, error) {
	c := compiler{}
	root := c.compile("", v)
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	return &Template{root: root, source: v, hasFuncs: c.actions}, nil
}

// MustCompile is Compile that panics on error, for tests (of this package and others) and literals
// known to be valid.
func MustCompile(v any) *Template {
	t, err := Compile(v)
	if err != nil {
		panic(err)
	}
	return t
}

// CompileString compiles a single string (a path, a query or header value); Execute then yields a
// string, with non-string values of a single action stringified: numbers plainly, null as "",
// objects and arrays as JSON.
func CompileString(s string) (*Template, error) {
	t, err := Compile(s)
	if err != nil {
		return nil, err
	}
	t.str = true
	return t, nil
}

// IsStatic reports whether the template holds no action, so Execute always returns its source.
func (t *Template) IsStatic() bool { return t == nil || !t.hasFuncs }

// Execute renders every template string of the value against data and returns a new value; the
// compiled value is never modified. data is usually Data or the map returned by Data.Map. A nil
// Template yields nil.
func (t *Template) Execute(data any) (any, error) {
	if t == nil {
		return nil, nil
	}
	var err error
	switch d := data.(type) {
	case Data:
		data, err = d.Map()
	case *Data:
		data, err = d.Map()
	}
	if err != nil {
		return nil, err
	}
	v, err := t.root.exec(data)
	if err != nil {
		return nil, err
	}
	if t.str {
		return Stringify(v)
	}
	return v, nil
}

// ExecuteString renders a template compiled by CompileString (or any template) and returns a string.
func (t *Template) ExecuteString(data any) (string, error) {
	v, err := t.Execute(data)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return Stringify(v)
	}
	return s, nil
}

// Stringify turns a JSON-compatible value into text: strings as they are, numbers plainly, null as "",
// booleans as true/false, objects and arrays as JSON.
func Stringify(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return formatFloat(x), nil
	case float32:
		return formatFloat(float64(x)), nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x), nil
	case fmt.Stringer:
		return x.String(), nil
	}
	b, err := MarshalJSON(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func formatFloat(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// MarshalJSON encodes v without HTML escaping, so "<" and "&" stay as they are (rendered values and
// request bodies must reach services unaltered).
func MarshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Data is what a step's templates can see; Map turns it into the map templates are executed against.
// Input and Steps hold decoded values. A Data made by Stored holds the job's input and the steps'
// outputs as the JSON they are stored as instead, and decodes them the first time a template reads
// the data (Map), once for the Data and all its copies: a call whose templates read nothing (a mock
// without templates, a static request) decodes nothing.
type Data struct {
	Input    any            // the job's input
	Steps    map[string]any // step name -> output, for the steps that have succeeded
	JobID    string         // the job's id
	StepName string         // the step being rendered
	Attempt  int            // 1-based attempt within the run
	Run      int            // 1-based run; a resume that re-executes a step starts a new run
	stored   *storedJSON    // set by Stored: Input and Steps are decoded from it on first use
}

// storedJSON is the JSON a Data made by Stored decodes on first use, and what it decoded to.
type storedJSON struct {
	once    sync.Once
	input   json.RawMessage
	outputs map[string]json.RawMessage
	value   any
	steps   map[string]any
	err     error
}

// Stored returns the Data of a call from the job's input and its succeeded steps' outputs as
// stored (JSON), decoded only when a template reads them.
func Stored(jobID, step string, attempt, run int, input json.RawMessage, outputs map[string]json.RawMessage) Data {
	return Data{JobID: jobID, StepName: step, Attempt: attempt, Run: run,
		stored: &storedJSON{input: input, outputs: outputs}}
}

// decoded returns the input and outputs, decoding them once when d was made by Stored.
func (d Data) decoded() (any, map[string]any, error) {
	st := d.stored
	if st == nil {
		return d.Input, d.Steps, nil
	}
	st.once.Do(func() {
		if st.value, st.err = DecodeJSON(st.input); st.err != nil {
			st.err = fmt.Errorf("decode job input: %w", st.err)
			return
		}
		st.steps = make(map[string]any, len(st.outputs))
		for name, out := range st.outputs {
			v, err := DecodeJSON(out)
			if err != nil {
				st.err = fmt.Errorf("decode output of step %s: %w", name, err)
				return
			}
			st.steps[name] = v
		}
	})
	return st.value, st.steps, st.err
}

// InputJSON returns the job's input as JSON (nil when there is none): as stored, or encoded from
// Input.
func (d Data) InputJSON() (json.RawMessage, error) {
	if d.stored != nil {
		if len(d.stored.input) == 0 {
			return nil, nil
		}
		return d.stored.input, nil
	}
	if d.Input == nil {
		return nil, nil
	}
	return MarshalJSON(d.Input)
}

// Map builds the documented template data shape: input, steps.NAME.output, job.id, step.{name,attempt,run}.
// Each call returns a new map (its values are shared). The error is the decoding's, for a Data made
// by Stored whose JSON is not valid.
func (d Data) Map() (map[string]any, error) {
	input, outs, err := d.decoded()
	if err != nil {
		return nil, err
	}
	steps := make(map[string]any, len(outs))
	for name, out := range outs {
		steps[name] = map[string]any{"output": out}
	}
	return map[string]any{
		"input": input,
		"steps": steps,
		"job":   map[string]any{"id": d.JobID},
		"step":  map[string]any{"name": d.StepName, "attempt": d.Attempt, "run": d.Run},
	}, nil
}

// DecodeJSON decodes JSON as templates see it: numbers keep their text (json.Number), and empty
// JSON is nil.
func DecodeJSON(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// FuncMap returns the functions available to templates besides text/template's builtins: json,
// default, upper, lower, trim, join and toString. None of them touch the environment or files.
func FuncMap() template.FuncMap {
	return template.FuncMap{
		// json encodes a value as JSON text: "{{ json .input }}".
		"json": func(v any) (string, error) {
			b, err := MarshalJSON(v)
			return string(b), err
		},
		// default returns def when v is empty (nil, "", 0, false, empty list or map): "{{ .x | default "a" }}".
		"default": func(def, v any) any {
			if isEmpty(v) {
				return def
			}
			return v
		},
		"upper":    strings.ToUpper,
		"lower":    strings.ToLower,
		"trim":     strings.TrimSpace,
		"toString": Stringify,
		// join joins the elements of a list, stringified: "{{ .input.tags | join ", " }}".
		"join": func(sep string, list any) (string, error) {
			rv := reflect.ValueOf(list)
			if list == nil {
				return "", nil
			}
			if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
				return "", fmt.Errorf("join: want a list, got %T", list)
			}
			parts := make([]string, rv.Len())
			for i := range parts {
				s, err := Stringify(rv.Index(i).Interface())
				if err != nil {
					return "", err
				}
				parts[i] = s
			}
			return strings.Join(parts, sep), nil
		},
	}
}

func isEmpty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return rv.Len() == 0
	case reflect.Bool:
		return !rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return rv.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return rv.Float() == 0
	case reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	default: // other kinds are never empty
	}
	return false
}

// node is one compiled part of the value.
type node interface {
	exec(data any) (any, error)
}

type literal struct{ v any }

func (n literal) exec(any) (any, error) { return n.v, nil }

type object struct {
	keys []string
	vals []node
}

func (n *object) exec(data any) (any, error) {
	out := make(map[string]any, len(n.keys))
	for i, k := range n.keys {
		v, err := n.vals[i].exec(data)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

type array struct{ elems []node }

func (n *array) exec(data any) (any, error) {
	out := make([]any, len(n.elems))
	for i, e := range n.elems {
		v, err := e.exec(data)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// text is a string holding at least one action.
type text struct {
	path string
	tmpl *template.Template
	// single is set when the string is exactly one action: it calls captureFunc with the action's
	// value, so Execute can return the value itself instead of its printed form.
	single *template.Template
}

func (n *text) exec(data any) (any, error) {
	if n.single != nil {
		// Clone so that the capturing function is private to this execution (Template is shared).
		t, err := n.single.Clone()
		if err != nil {
			return nil, &PathError{Path: n.path, Err: err}
		}
		var got any
		t.Funcs(template.FuncMap{captureFunc: func(v any) string { got = v; return "" }})
		if err := t.Execute(discard{}, data); err != nil {
			return nil, &PathError{Path: n.path, Err: err}
		}
		return got, nil
	}
	var b strings.Builder
	if err := n.tmpl.Execute(&b, data); err != nil {
		return nil, &PathError{Path: n.path, Err: err}
	}
	return b.String(), nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

type compiler struct {
	errs    []error
	actions bool
}

func (c *compiler) compile(path string, v any) node {
	switch x := v.(type) {
	case nil, bool, json.Number, float64, float32, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return literal{v}
	case string:
		if !strings.Contains(x, "{{") {
			return literal{v}
		}
		n, err := compileText(path, x)
		if err != nil {
			c.errs = append(c.errs, &PathError{Path: path, Err: err})
			return literal{v}
		}
		c.actions = true
		return n
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		o := &object{keys: keys, vals: make([]node, len(keys))}
		for i, k := range keys {
			o.vals[i] = c.compile(joinKey(path, k), x[k])
		}
		return o
	case []any:
		a := &array{elems: make([]node, len(x))}
		for i, e := range x {
			a.elems[i] = c.compile(fmt.Sprintf("%s[%d]", path, i), e)
		}
		return a
	}
	c.errs = append(c.errs, &PathError{Path: path, Err: fmt.Errorf("unsupported value of type %T", v)})
	return literal{nil}
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func newTemplate() *template.Template {
	return template.New(templateName).Option("missingkey=error").Funcs(FuncMap()).
		Funcs(template.FuncMap{printFunc: Stringify})
}

func compileText(path, s string) (*text, error) {
	t, err := newTemplate().Parse(s)
	if err != nil {
		return nil, err
	}
	n := &text{path: path, tmpl: t}
	if pipe := singleAction(t); pipe != nil {
		src := "{{" + captureFunc + " (" + pipe.String() + ")}}"
		single, err := newTemplate().Funcs(template.FuncMap{captureFunc: func(any) string { return "" }}).Parse(src)
		if err != nil {
			// Cannot happen for a pipeline that parsed above; fall back to plain rendering.
			return n, nil //nolint:nilerr
		}
		n.single = single
	}
	wrapActions(t.Tree, t.Root)
	return n, nil
}

// wrapActions makes every printing action of the tree print through printFunc, so that values inside
// a larger string read as JSON would ({"a":1} rather than map[a:1], 1000000 rather than 1e+06, null
// as nothing rather than <no value>).
func wrapActions(tree *parse.Tree, n parse.Node) {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			wrapActions(tree, c)
		}
	case *parse.ActionNode:
		if len(x.Pipe.Decl) != 0 {
			return // an assignment prints nothing
		}
		ident := parse.NewIdentifier(printFunc).SetTree(tree).SetPos(x.Pos)
		cmd := &parse.CommandNode{NodeType: parse.NodeCommand, Pos: x.Pos, Args: []parse.Node{ident, x.Pipe}}
		x.Pipe = &parse.PipeNode{NodeType: parse.NodePipe, Pos: x.Pos, Line: x.Line, Cmds: []*parse.CommandNode{cmd}}
	case *parse.IfNode:
		wrapActions(tree, x.List)
		wrapActions(tree, x.ElseList)
	case *parse.RangeNode:
		wrapActions(tree, x.List)
		wrapActions(tree, x.ElseList)
	case *parse.WithNode:
		wrapActions(tree, x.List)
		wrapActions(tree, x.ElseList)
	}
}

// singleAction returns the pipeline of a template that is exactly one action, surrounded by nothing
// but whitespace, and declares no variable; nil otherwise.
func singleAction(t *template.Template) *parse.PipeNode {
	if t.Tree == nil || t.Root == nil {
		return nil
	}
	var action *parse.ActionNode
	for _, n := range t.Root.Nodes {
		switch x := n.(type) {
		case *parse.TextNode:
			if len(bytes.TrimSpace(x.Text)) != 0 {
				return nil
			}
		case *parse.ActionNode:
			if action != nil {
				return nil
			}
			action = x
		default:
			return nil
		}
	}
	if action == nil || len(action.Pipe.Decl) != 0 {
		return nil
	}
	return action.Pipe
}

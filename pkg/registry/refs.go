package registry

// This file checks that the templates of a step use only the outputs of steps upstream of it.

import (
	"fmt"
	"slices"
	"strings"
	"text/template/parse"
)

// templateField is one string of a step's request or mock output that holds a template.
type templateField struct {
	path string // where the file says it, e.g. features.f.steps[1].request.body.messages[0].content
	text string // the template
	// via is set when the step inherits the field from its service (a mock output): the step's path.
	via string
}

// templateFields returns the template strings of v (a JSON-compatible value, as render.Compile takes)
// with their paths under path, in the naming of render.PathError.
func templateFields(path string, v any) []templateField {
	var out []templateField
	var walk func(p string, v any)
	walk = func(p string, v any) {
		switch x := v.(type) {
		case string:
			if strings.Contains(x, "{{") {
				out = append(out, templateField{path: p, text: x})
			}
		case map[string]any:
			for _, k := range keys(x) {
				walk(join(p, k), x[k])
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", p, i), e)
			}
		}
	}
	walk(path, v)
	return out
}

// requestTemplates returns the template strings of a step's request: path, query, headers and body.
func requestTemplates(path string, r *Request) []templateField {
	if r == nil {
		return nil
	}
	out := templateFields(join(path, "path"), r.Path)
	for _, k := range keys(r.Query) {
		out = append(out, templateFields(join(join(path, "query"), k), r.Query[k])...)
	}
	for _, k := range keys(r.Headers) {
		out = append(out, templateFields(join(join(path, "headers"), k), r.Headers[k])...)
	}
	return append(out, templateFields(join(path, "body"), r.Body)...)
}

// stepRef is a use of .steps found in a template.
type stepRef struct {
	expr string // the expression as written, e.g. ".steps.a.output" or `index .steps "a"`
	kind refKind
	name string // the step named, for refNamed
}

type refKind int

const (
	refNamed   refKind = iota // .steps.NAME..., $.steps.NAME..., index .steps "NAME" ...
	refDynamic                // index .steps X with X not a quoted string: the step cannot be known
	refAll                    // .steps itself, or the whole data (. or $) that holds it
)

// stepRefs finds every use of .steps in a template (which must parse). The dot is followed through
// with and range: inside {{ with .input }} ".steps.x" is a field of the input, not a step, while "$"
// is always the whole data. A use that cannot be checked statically (the whole .steps map, the whole
// data, a step name computed at run time) is reported as such, since it would reach the outputs of
// steps that are not upstream.
func stepRefs(text string) ([]stepRef, error) {
	w, err := walkTemplate(text)
	if err != nil {
		return nil, err
	}
	return w.refs, nil
}

// walkTemplate parses a template and walks every tree of it. A {{ define }}d template runs with
// whatever dot {{ template }} passes; taking it for the whole data errs on the side of checking.
func walkTemplate(text string) (*refWalker, error) {
	trees := map[string]*parse.Tree{}
	t := parse.New("template")
	t.Mode = parse.SkipFuncCheck
	if _, err := t.Parse(text, "", "", trees); err != nil {
		return nil, err
	}
	w := &refWalker{}
	for _, name := range keys(trees) {
		w.list(trees[name].Root, true)
	}
	return w, nil
}

type refWalker struct {
	refs  []stepRef
	roots []string // the top-level keys of the data the template reads (input, steps, ...), in order
}

// templateRoots returns the top-level keys of the template data a template (which must parse) reads:
// "input" for .input.x, "request" for $.request, and so on.
func templateRoots(text string) ([]string, error) {
	w, err := walkTemplate(text)
	if err != nil {
		return nil, err
	}
	return w.roots, nil
}

func (w *refWalker) list(n *parse.ListNode, root bool) {
	if n == nil {
		return
	}
	for _, c := range n.Nodes {
		switch x := c.(type) {
		case *parse.ActionNode:
			w.pipe(x.Pipe, root)
		case *parse.IfNode:
			w.pipe(x.Pipe, root)
			w.list(x.List, root)
			w.list(x.ElseList, root)
		case *parse.RangeNode:
			w.pipe(x.Pipe, root)
			w.list(x.List, false) // the dot is each element
			w.list(x.ElseList, root)
		case *parse.WithNode:
			w.pipe(x.Pipe, root)
			w.list(x.List, w.isRoot(x.Pipe, root))
			w.list(x.ElseList, root)
		case *parse.TemplateNode:
			if x.Pipe != nil && !w.isRoot(x.Pipe, root) {
				w.pipe(x.Pipe, root)
			} // passing the whole data on is fine: define bodies are checked as seeing it
		}
	}
}

// isRoot reports whether a pipeline yields the whole data (. at the root, or $).
func (w *refWalker) isRoot(p *parse.PipeNode, root bool) bool {
	path, dyn, ok := resolveData(p, root, nil)
	return ok && !dyn && len(path) == 0
}

func (w *refWalker) pipe(p *parse.PipeNode, root bool) {
	if p == nil {
		return
	}
	for _, c := range p.Cmds {
		w.command(c, root)
	}
}

func (w *refWalker) command(c *parse.CommandNode, root bool) {
	var keys []parse.Node
	if path, dyn, ok := indexPath(c, root, &keys); ok {
		w.use(path, dyn, c.String())
		for _, k := range keys {
			w.arg(k, root)
		}
		return
	}
	for _, a := range c.Args {
		w.arg(a, root)
	}
}

func (w *refWalker) arg(n parse.Node, root bool) {
	var keys []parse.Node
	if path, dyn, ok := resolveData(n, root, &keys); ok {
		w.use(path, dyn, n.String())
		for _, k := range keys {
			w.arg(k, root)
		}
		return
	}
	switch x := n.(type) {
	case *parse.PipeNode:
		w.pipe(x, root)
	case *parse.ChainNode:
		w.arg(x.Node, root)
	}
}

// use records a value taken from the data at path (dyn: a key after path is computed at run time).
func (w *refWalker) use(path []string, dyn bool, expr string) {
	if len(path) > 0 && !slices.Contains(w.roots, path[0]) {
		w.roots = append(w.roots, path[0])
	}
	switch {
	case len(path) == 0 && dyn:
		w.refs = append(w.refs, stepRef{expr: expr, kind: refDynamic})
	case len(path) == 0:
		w.refs = append(w.refs, stepRef{expr: expr, kind: refAll})
	case path[0] != "steps":
	case len(path) == 1 && dyn:
		w.refs = append(w.refs, stepRef{expr: expr, kind: refDynamic})
	case len(path) == 1:
		w.refs = append(w.refs, stepRef{expr: expr, kind: refAll})
	default:
		w.refs = append(w.refs, stepRef{expr: expr, kind: refNamed, name: path[1]})
	}
}

// resolveData returns the path from the whole data that n reads, when it can be told: .a.b (at the root
// dot), $.a.b, (X).c with X resolvable, and index X "k" with X resolvable. dyn is set when a key after
// path is computed at run time; the nodes computing it are appended to keys.
func resolveData(n parse.Node, root bool, keys *[]parse.Node) (path []string, dyn bool, ok bool) {
	switch x := n.(type) {
	case *parse.DotNode:
		return nil, false, root
	case *parse.FieldNode:
		return x.Ident, false, root
	case *parse.VariableNode:
		if len(x.Ident) > 0 && x.Ident[0] == "$" {
			return x.Ident[1:], false, true
		}
	case *parse.ChainNode:
		base, dyn, ok := resolveData(x.Node, root, keys)
		if !ok || dyn {
			return base, dyn, ok
		}
		return append(slices.Clone(base), x.Field...), false, true
	case *parse.PipeNode:
		if len(x.Decl) != 0 || len(x.Cmds) != 1 {
			return nil, false, false
		}
		c := x.Cmds[0]
		if path, dyn, ok := indexPath(c, root, keys); ok {
			return path, dyn, true
		}
		if len(c.Args) == 1 {
			return resolveData(c.Args[0], root, keys)
		}
	}
	return nil, false, false
}

// indexPath resolves {{ index X "k1" "k2" }} when X resolves.
func indexPath(c *parse.CommandNode, root bool, keys *[]parse.Node) (path []string, dyn bool, ok bool) {
	if len(c.Args) < 2 {
		return nil, false, false
	}
	if id, isIdent := c.Args[0].(*parse.IdentifierNode); !isIdent || id.Ident != "index" {
		return nil, false, false
	}
	base, dyn, ok := resolveData(c.Args[1], root, keys)
	if !ok {
		return nil, false, false
	}
	path = slices.Clone(base)
	for i, a := range c.Args[2:] {
		if dyn {
			break
		}
		s, isString := a.(*parse.StringNode)
		if !isString {
			dyn = true
			if keys != nil {
				*keys = append(*keys, c.Args[2+i:]...)
			}
			break
		}
		path = append(path, s.Text)
	}
	return path, dyn, true
}

// checkStepRefs reports every template of a feature's steps that uses the output of a step that is
// not upstream of it (through needs, transitively): an unknown step, itself, a step downstream or
// unrelated, a step name computed at run time, or the whole .steps map. The data of an attempt holds
// the outputs of every step that has succeeded so far, so anything else would depend on timing.
func (l *loader) checkStepRefs(feat *Feature, names []string, fields map[string][]templateField) {
	for _, st := range feat.Steps {
		up := feat.upstream(st.Name)
		upList := inFileOrder(names, up)
		for _, f := range fields[st.Name] {
			refs, err := stepRefs(f.text)
			if err != nil {
				continue // reported by render.Compile
			}
			seen := map[string]bool{}
			for _, r := range refs {
				msg := refProblem(feat, st, r, up, upList)
				if msg == "" || seen[msg] {
					continue
				}
				seen[msg] = true
				if f.via != "" {
					msg += fmt.Sprintf(" (this output is %s's, used by %s)", st.Service, f.via)
				}
				l.errorf(f.path, "%s", msg)
			}
		}
	}
}

// refProblem says what is wrong with a use of .steps in step st, or "" when it names a step upstream.
func refProblem(feat *Feature, st *Step, r stepRef, up map[string]bool, upList []string) string {
	expected := fmt.Sprintf("expected a step upstream of %q through needs: %s", st.Name, list(upList))
	if len(upList) == 0 {
		expected = fmt.Sprintf("expected a step upstream of %q through needs, and it needs none", st.Name)
	}
	switch r.kind {
	case refNamed: // checked below
	case refDynamic:
		return fmt.Sprintf("%s: the step must be named in the template (.steps.NAME or index .steps \"NAME\") so that it can be checked (%s)", r.expr, expected)
	case refAll:
		if r.expr == "." || r.expr == "$" {
			return fmt.Sprintf("%s: the whole template data holds .steps, the outputs of every step that has succeeded so far; use what you need (.input, .steps.NAME.output, .job.id) instead", r.expr)
		}
		return fmt.Sprintf("%s: name the step (.steps.NAME.output); the whole .steps would hold the outputs of steps that are not upstream (%s)", r.expr, expected)
	}
	switch _, known := feat.Step(r.name); {
	case up[r.name]:
		return ""
	case r.name == st.Name:
		return fmt.Sprintf("%s: step %q cannot use its own output (%s)", r.expr, st.Name, expected)
	case !known:
		return fmt.Sprintf("%s: unknown step %q (%s)", r.expr, r.name, expected)
	case slices.Contains(feat.Downstream(st.Name), r.name):
		return fmt.Sprintf("%s: step %q runs after %q, which it needs (%s)", r.expr, r.name, st.Name, expected)
	default:
		return fmt.Sprintf("%s: step %q is not upstream of %q (add it to needs; %s)", r.expr, r.name, st.Name, expected)
	}
}

// upstream returns the names of the steps that the step called name needs, directly or transitively;
// the step itself is not included, even on a cycle.
func (f *Feature) upstream(name string) map[string]bool {
	up := map[string]bool{}
	var visit func(string)
	visit = func(n string) {
		s, ok := f.Step(n)
		if !ok {
			return
		}
		for _, d := range s.Needs {
			if !up[d] {
				up[d] = true
				visit(d)
			}
		}
	}
	visit(name)
	delete(up, name)
	return up
}

func inFileOrder(names []string, set map[string]bool) []string {
	var out []string
	for _, n := range names {
		if set[n] {
			out = append(out, n)
		}
	}
	return out
}

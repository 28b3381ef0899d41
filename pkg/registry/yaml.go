package registry

// This file holds the YAML decoding primitives of the loader: ${VAR} expansion, typed scalars,
// mappings with known keys, and values for templates.

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// expandAll expands ${...} in every scalar value (never in mapping keys), in place, before any typing.
// An expanded plain scalar is re-typed from its new text, so max_concurrency: ${N:-8} is an integer; a
// quoted one stays a string.
func (l *loader) expandAll(n *yaml.Node, path string) {
	if n == nil || l.visited[n] {
		return
	}
	l.visited[n] = true
	switch n.Kind {
	case yaml.AliasNode:
		l.expandAll(n.Alias, path)
	case yaml.DocumentNode:
		for _, c := range n.Content {
			l.expandAll(c, path)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			l.expandAll(c, fmt.Sprintf("%s[%d]", path, i))
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			l.expandAll(n.Content[i+1], join(path, n.Content[i].Value))
		}
	case yaml.ScalarNode:
		out, vars, values, err := expand(n.Value, l.env)
		if err != nil {
			l.errorf(path, "%v", err)
			l.bad[n] = true
			return
		}
		if vars == nil {
			if out != n.Value { // only "$$" escapes
				n.Value = out
			}
			return
		}
		l.exp[n] = &expansion{raw: n.Value, vars: vars, values: values}
		l.allSecrets = append(l.allSecrets, values...)
		n.Value = out
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0 {
			n.Tag = "" // re-resolve from the expanded text
		}
	}
}

// show quotes a scalar for an error message; an expanded value is never shown, only what was written.
func (l *loader) show(n *yaml.Node) string {
	if e, ok := l.exp[n]; ok {
		return fmt.Sprintf("%q (expanded value not shown)", e.raw)
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default: // scalars: shown below
	}
	if n.ShortTag() == "!!null" {
		return "null"
	}
	if n.ShortTag() == "!!str" {
		return fmt.Sprintf("%q", n.Value)
	}
	return n.Value
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNull(n *yaml.Node) bool {
	n = resolve(n)
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

type entry struct {
	key string
	val *yaml.Node
}

// entries returns the pairs of a mapping in file order, reporting duplicate keys; nil if n is not a
// mapping. YAML merge keys ("<<: *anchor") are honoured: merged pairs come after the explicit ones,
// which win.
func (l *loader) entries(n *yaml.Node, path string) []entry {
	n = resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(path, "expected a mapping, got %s", l.show(n))
		return nil
	}
	seen := map[string]bool{}
	out := make([]entry, 0, len(n.Content)/2)
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := resolve(n.Content[i])
		if k.Kind != yaml.ScalarNode {
			l.errorf(path, "keys must be strings, got %s", l.show(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			v := resolve(n.Content[i+1])
			if v.Kind == yaml.SequenceNode {
				for _, c := range v.Content {
					merged = append(merged, resolve(c))
				}
			} else {
				merged = append(merged, v)
			}
			continue
		}
		if seen[k.Value] {
			l.errorf(join(path, k.Value), "duplicate key")
			continue
		}
		seen[k.Value] = true
		out = append(out, entry{key: k.Value, val: resolve(n.Content[i+1])})
	}
	for _, m := range merged {
		if m.Kind != yaml.MappingNode {
			l.errorf(join(path, "<<"), "can only merge mappings, got %s", l.show(m))
			continue
		}
		for _, e := range l.entries(m, path) {
			if !seen[e.key] {
				seen[e.key] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// fields reads a mapping with a fixed set of keys, reporting unknown ones; null values count as
// absent. It returns nil (after reporting) if n is not a mapping.
func (l *loader) fields(n *yaml.Node, path string, allowed []string) map[string]*yaml.Node {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		what := "nothing"
		if n != nil {
			what = l.show(n)
		}
		if path == "" {
			l.errorf(path, "expected a mapping with keys %s, got %s", strings.Join(allowed, ", "), what)
		} else {
			l.errorf(path, "expected a mapping, got %s", what)
		}
		return nil
	}
	out := map[string]*yaml.Node{}
	for _, e := range l.entries(n, path) {
		if path == "" && strings.HasPrefix(e.key, "x-") {
			continue // top-level extension fields, as in Docker Compose: a place for YAML anchors
		}
		if !slices.Contains(allowed, e.key) {
			l.errorf(join(path, e.key), "unknown field (expected one of: %s)", strings.Join(allowed, ", "))
			continue
		}
		if !isNull(e.val) {
			out[e.key] = e.val
		}
	}
	return out
}

// str reads a string. Numbers and booleans are taken as written (a header value of 3 is "3").
func (l *loader) str(n *yaml.Node, path string) (string, bool) {
	if l.bad[n] {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		l.errorf(path, "expected a string, got %s", l.show(n))
		return "", false
	}
	return n.Value, true
}

// typed returns the tag of a scalar, re-resolving an expanded quoted string ("${N}") so that numbers
// and booleans can come from the environment.
func (l *loader) typed(n *yaml.Node) string {
	tag := n.ShortTag()
	if _, ok := l.exp[n]; ok && tag == "!!str" {
		tag = (&yaml.Node{Kind: yaml.ScalarNode, Value: n.Value}).ShortTag()
	}
	return tag
}

func (l *loader) integer(n *yaml.Node, path string) (int64, bool) {
	if l.bad[n] {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && l.typed(n) == "!!int" {
		var i int64
		if err := (&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: n.Value}).Decode(&i); err == nil {
			return i, true
		}
	}
	l.errorf(path, "expected an integer, got %s", l.show(n))
	return 0, false
}

func (l *loader) nonNegInt(n *yaml.Node, path string) (int, bool) {
	i, ok := l.integer(n, path)
	if !ok {
		return 0, false
	}
	if i < 0 || i > math.MaxInt32 {
		l.errorf(path, "must be between 0 and %d, got %d", math.MaxInt32, i)
		return 0, false
	}
	return int(i), true
}

func (l *loader) float(n *yaml.Node, path string) (float64, bool) {
	if l.bad[n] {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode {
		if tag := l.typed(n); tag == "!!int" || tag == "!!float" {
			var f float64
			if err := (&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!float", Value: n.Value}).Decode(&f); err == nil && !math.IsNaN(f) {
				return f, true
			}
		}
	}
	l.errorf(path, "expected a number, got %s", l.show(n))
	return 0, false
}

// duration reads a Go duration string ("60s", "2m", "1m30s"). Bare numbers are refused: "60" could
// mean seconds or milliseconds.
func (l *loader) duration(n *yaml.Node, path string, positive bool) (time.Duration, bool) {
	if l.bad[n] {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || l.typed(n) != "!!str" {
		if n.Kind == yaml.ScalarNode && (l.typed(n) == "!!int" || l.typed(n) == "!!float") {
			l.errorf(path, "invalid duration %s: a number needs a unit (e.g. \"%ss\" or \"%sms\")", l.show(n), n.Value, n.Value)
		} else {
			l.errorf(path, "expected a duration such as \"30s\" or \"1m30s\", got %s", l.show(n))
		}
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		l.errorf(path, "invalid duration %s (expected Go syntax such as \"500ms\", \"30s\", \"1m30s\")", l.show(n))
		return 0, false
	}
	if d < 0 || (positive && d == 0) {
		want := "must not be negative"
		if positive {
			want = "must be positive"
		}
		l.errorf(path, "%s, got %s", want, l.show(n))
		return 0, false
	}
	return d, true
}

// value converts a node to a JSON-compatible value: map[string]any, []any, string, int, float64,
// bool or nil.
func (l *loader) value(n *yaml.Node, path string) (any, bool) {
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]any{}
		ok := true
		for _, e := range l.entries(n, path) {
			v, vok := l.value(e.val, join(path, e.key))
			ok = ok && vok
			m[e.key] = v
		}
		return m, ok
	case yaml.SequenceNode:
		s := make([]any, len(n.Content))
		ok := true
		for i, c := range n.Content {
			v, vok := l.value(c, fmt.Sprintf("%s[%d]", path, i))
			ok = ok && vok
			s[i] = v
		}
		return s, ok
	case yaml.ScalarNode:
		if l.bad[n] {
			return nil, false
		}
		switch n.ShortTag() {
		case "!!null":
			return nil, true
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err == nil {
				return b, true
			}
		case "!!int":
			var i int
			if err := n.Decode(&i); err == nil {
				return i, true
			}
			var f float64 // too large for int
			if err := n.Decode(&f); err == nil {
				return f, true
			}
		case "!!float":
			var f float64
			if err := n.Decode(&f); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
				return f, true
			}
			l.errorf(path, "invalid number %s (JSON has no NaN or infinity)", l.show(n))
			return nil, false
		}
		return n.Value, true // strings, timestamps and anything else: as written
	default: // documents and aliases are resolved before this
	}
	l.errorf(path, "unsupported YAML value")
	return nil, false
}

// maxAliasNodes bounds how many nodes aliases may add to a document once expanded: the loader walks
// an aliased value once per reference, so nested aliases (a "billion laughs") would otherwise take
// exponential time and memory.
const maxAliasNodes = 100_000

// aliasSizeCap is where checkAliases stops counting.
const aliasSizeCap = 1000 * maxAliasNodes

// checkAliases returns why the document's aliases cannot be expanded, or "": an alias inside the
// value of its own anchor (&a [*a], or a merge of &a into itself) would make the loader recurse
// forever, and aliases of aliases may expand to more than maxAliasNodes extra nodes.
func checkAliases(root *yaml.Node) string {
	size := map[*yaml.Node]int{}  // expanded size of each node walked
	open := map[*yaml.Node]bool{} // nodes being walked: an alias to one of them is a cycle
	cycle := ""
	var walk func(n *yaml.Node) int
	walk = func(n *yaml.Node) int {
		if s, ok := size[n]; ok {
			return s
		}
		if open[n] {
			if cycle == "" {
				cycle = n.Anchor
			}
			return 0
		}
		open[n] = true
		s := 1
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			s += walk(n.Alias)
		}
		for _, c := range n.Content {
			s = min(s+walk(c), aliasSizeCap) // saturates: no overflow however deep the aliases nest
		}
		delete(open, n)
		size[n] = s
		return s
	}
	total := walk(root)
	if cycle != "" {
		return fmt.Sprintf("anchor &%s contains an alias to itself (*%s)", cycle, cycle)
	}
	if extra := total - len(size); extra > maxAliasNodes {
		return fmt.Sprintf("aliases expand the file by more than %d nodes (aliases of aliases of large values?)", maxAliasNodes)
	}
	return ""
}

package deploycheck

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// root is the repository root as seen from this package's directory, where go test runs.
const root = "../../.."

// k8sDir holds the Kubernetes manifests, relative to the repository root.
const k8sDir = "deploy/k8s"

func repoPath(rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }

func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(rel))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return b
}

// decodeAll decodes every YAML document of a file (documents that are only comments are skipped).
func decodeAll(t *testing.T, rel string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readRepoFile(t, rel)))
	var out []map[string]any
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", rel, i+1, err)
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
}

// get walks nested maps; nil when a key is missing or a value on the way is not a map.
func get(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any, keys ...string) string {
	s, _ := get(v, keys...).(string)
	return s
}

func mapAt(v any, keys ...string) map[string]any {
	m, _ := get(v, keys...).(map[string]any)
	return m
}

func listAt(v any, keys ...string) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

// scalar renders a YAML scalar as the string Kubernetes or Compose would pass on.
func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case int:
		return strconv.Itoa(x)
	case bool:
		return strconv.FormatBool(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

func scalars(l []any) []string {
	out := make([]string, 0, len(l))
	for _, v := range l {
		out = append(out, scalar(v))
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// portOf is the port of a listen address such as ":8000" or "0.0.0.0:9091".
func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return port
}

// object is one Kubernetes object of a manifest file.
type object struct {
	file string // relative to the repository root
	doc  map[string]any
}

func (o object) kind() string       { return str(o.doc, "kind") }
func (o object) apiVersion() string { return str(o.doc, "apiVersion") }
func (o object) name() string       { return str(o.doc, "metadata", "name") }
func (o object) String() string     { return fmt.Sprintf("%s: %s %s", o.file, o.kind(), o.name()) }

// manifests is everything under deploy/k8s: the objects of every file, components included, and the
// kustomization of every directory.
type manifests struct {
	objs           []object
	kustomizations map[string]map[string]any // by directory, relative to the repository root
	yamlFiles      map[string][]string       // manifest file names (not kustomization.yaml) by directory
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{kustomizations: map[string]map[string]any{}, yamlFiles: map[string][]string{}}
	err := filepath.WalkDir(repoPath(k8sDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.Name() == "kustomization.yaml":
			docs := decodeAll(t, rel)
			if len(docs) != 1 {
				t.Errorf("%s: want one document, got %d", rel, len(docs))
				return nil
			}
			m.kustomizations[path.Dir(rel)] = docs[0]
		case strings.HasSuffix(d.Name(), ".yaml") || strings.HasSuffix(d.Name(), ".yml"):
			m.yamlFiles[path.Dir(rel)] = append(m.yamlFiles[path.Dir(rel)], d.Name())
			for _, doc := range decodeAll(t, rel) {
				m.objs = append(m.objs, object{file: rel, doc: doc})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", k8sDir, err)
	}
	if len(m.objs) == 0 {
		t.Fatalf("no manifests under %s", k8sDir)
	}
	return m
}

func (m *manifests) ofKind(kind string) []object {
	var out []object
	for _, o := range m.objs {
		if o.kind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func (m *manifests) find(kind, name string) (object, bool) {
	for _, o := range m.objs {
		if o.kind() == kind && o.name() == name {
			return o, true
		}
	}
	return object{}, false
}

// data is a ConfigMap's data or a Secret's data (base64-decoded) and stringData.
func (m *manifests) data(t *testing.T, kind, name string) (map[string]string, bool) {
	t.Helper()
	o, ok := m.find(kind, name)
	if !ok {
		return nil, false
	}
	out := map[string]string{}
	for k, v := range mapAt(o.doc, "data") {
		s := scalar(v)
		if kind == "Secret" {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				t.Errorf("%s: data.%s is not base64: %v", o, k, err)
			}
			s = string(b)
		}
		out[k] = s
	}
	for k, v := range mapAt(o.doc, "stringData") {
		out[k] = scalar(v)
	}
	return out, true
}

// workload is a Deployment or a Job: its pod template.
type workload struct {
	object
	pod    map[string]any // spec.template.spec
	labels map[string]any // spec.template.metadata.labels
}

func (m *manifests) workloads() []workload {
	var out []workload
	for _, o := range m.objs {
		if o.kind() == "Deployment" || o.kind() == "Job" {
			out = append(out, workload{object: o, pod: mapAt(o.doc, "spec", "template", "spec"), labels: mapAt(o.doc, "spec", "template", "metadata", "labels")})
		}
	}
	return out
}

func (w workload) containers() []map[string]any {
	var out []map[string]any
	for _, c := range listAt(w.pod, "containers") {
		if cm, ok := c.(map[string]any); ok {
			out = append(out, cm)
		}
	}
	return out
}

// imageName is a container's image without tag or digest.
func imageName(c map[string]any) string {
	img := str(c, "image")
	if i := strings.IndexByte(img, '@'); i >= 0 {
		img = img[:i]
	}
	if i := strings.LastIndexByte(img, ':'); i > strings.LastIndexByte(img, '/') {
		img = img[:i]
	}
	return img
}

// env resolves a container's environment as the kubelet does: envFrom first (in order), then env.
// Every reference must resolve to an object and key of the manifests, unless marked optional.
func (m *manifests) env(t *testing.T, where string, c map[string]any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range listAt(c, "envFrom") {
		var kind string
		var ref map[string]any
		switch {
		case mapAt(f, "configMapRef") != nil:
			kind, ref = "ConfigMap", mapAt(f, "configMapRef")
		case mapAt(f, "secretRef") != nil:
			kind, ref = "Secret", mapAt(f, "secretRef")
		default:
			t.Errorf("%s: envFrom entry without configMapRef or secretRef", where)
			continue
		}
		data, ok := m.data(t, kind, str(ref, "name"))
		if !ok {
			if get(ref, "optional") != true {
				t.Errorf("%s: envFrom names %s %q, which no manifest defines", where, kind, str(ref, "name"))
			}
			continue
		}
		for k, v := range data {
			out[str(f, "prefix")+k] = v
		}
	}
	for _, e := range listAt(c, "env") {
		name := str(e, "name")
		vf := mapAt(e, "valueFrom")
		if vf == nil {
			out[name] = scalar(get(e, "value"))
			continue
		}
		var kind string
		var ref map[string]any
		switch {
		case mapAt(vf, "secretKeyRef") != nil:
			kind, ref = "Secret", mapAt(vf, "secretKeyRef")
		case mapAt(vf, "configMapKeyRef") != nil:
			kind, ref = "ConfigMap", mapAt(vf, "configMapKeyRef")
		default:
			out[name] = "1" // fieldRef or resourceFieldRef: filled in by the kubelet
			continue
		}
		data, ok := m.data(t, kind, str(ref, "name"))
		v, hasKey := data[str(ref, "key")]
		if (!ok || !hasKey) && get(ref, "optional") != true {
			t.Errorf("%s: env %s refers to %s %q key %q, which the manifests do not define", where, name, kind, str(ref, "name"), str(ref, "key"))
			continue
		}
		out[name] = v
	}
	return out
}

// selectorMatches reports whether every label of a matchLabels selector is on labels.
func selectorMatches(sel, labels map[string]any) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || scalar(lv) != scalar(v) {
			return false
		}
	}
	return true
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, COPY, ENV, ...
	args string
	line int
}

func parseDockerfile(t *testing.T, rel string) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(readRepoFile(t, rel)), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue // comments (also inside a continued instruction) and blank lines
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start})
		cur.Reset()
	}
	return out
}

// finalStage is the instructions of the last build stage, its FROM first.
func finalStage(ins []instruction) []instruction {
	last := 0
	for i, in := range ins {
		if in.cmd == "FROM" {
			last = i
		}
	}
	return ins[last:]
}

// dockerEnv is what the ENV instructions set (K=V pairs, or the legacy `ENV K V`).
func dockerEnv(ins []instruction) map[string]string {
	out := map[string]string{}
	for _, in := range ins {
		if in.cmd != "ENV" {
			continue
		}
		fields := strings.Fields(in.args)
		if len(fields) > 0 && !strings.Contains(fields[0], "=") {
			out[fields[0]] = strings.TrimSpace(strings.TrimPrefix(in.args, fields[0]))
			continue
		}
		for _, f := range fields {
			k, v, _ := strings.Cut(f, "=")
			out[k] = strings.Trim(v, `"'`)
		}
	}
	return out
}

// execForm decodes a JSON-array (exec form) argument list; ok is false for the shell form, which
// needs /bin/sh, absent from CAO's images.
func execForm(args string) ([]string, bool) {
	var out []string
	if err := json.Unmarshal([]byte(args), &out); err != nil {
		return nil, false
	}
	return out, true
}

// dockerignore is a .dockerignore's patterns, matched as Docker does: a pattern excludes a path or
// any of its parents, `**` spans directories, `!` re-includes, and the last matching line wins.
type dockerignore []struct {
	re     *regexp.Regexp
	negate bool
	text   string
}

func parseDockerignore(data string) dockerignore {
	var out dockerignore
	for _, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		pat := path.Clean(strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/"))
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(pat); i++ {
			switch c := pat[i]; {
			case strings.HasPrefix(pat[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re.WriteString(".*")
				i++
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("$")
		out = append(out, struct {
			re     *regexp.Regexp
			negate bool
			text   string
		}{regexp.MustCompile(re.String()), neg, line})
	}
	return out
}

// excluded reports whether rel (slash-separated, relative to the context) is left out of the build
// context, and by which line.
func (d dockerignore) excluded(rel string) (bool, string) {
	rel = path.Clean(rel)
	var paths []string
	for p := rel; p != "." && p != "/"; p = path.Dir(p) {
		paths = append(paths, p)
	}
	excluded, by := false, ""
	for _, pat := range d {
		if slices.ContainsFunc(paths, pat.re.MatchString) {
			excluded, by = !pat.negate, pat.text
		}
	}
	return excluded, by
}

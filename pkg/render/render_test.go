package render_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/render"
)

func decode(t *testing.T, s string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	require.NoError(t, dec.Decode(&v))
	return v
}

func TestExecuteKeepsInputIntact(t *testing.T) {
	t.Parallel()

	tricky := []string{
		`He said "hi" and left`,
		"line one\nline two\r\n\ttabbed",
		`back\slash and "quotes" and 'single' and </script> & <b>`,
		"emoji 🚀🎉 and CJK 市场调研 and RTL مرحبا",
		`{"injected": true}, "x": "`,
		`{{ .input.name }}`, // input is data, never a template
	}
	tmpl, err := render.Compile(map[string]any{
		"messages": []any{map[string]any{"role": "user", "content": "Market for {{ .input.name }}!"}},
		"raw":      "{{ .input.name }}",
	})
	require.NoError(t, err)

	for _, name := range tricky {
		out, err := tmpl.Execute(render.Data{Input: map[string]any{"name": name}})
		require.NoError(t, err)
		m := out.(map[string]any)
		require.Equal(t, "Market for "+name+"!", m["messages"].([]any)[0].(map[string]any)["content"])
		require.Equal(t, name, m["raw"])

		// Through JSON and back: exactly the same text.
		b, err := json.Marshal(out)
		require.NoError(t, err)
		back := decode(t, string(b)).(map[string]any)
		require.Equal(t, name, back["raw"])
		require.Equal(t, "Market for "+name+"!", back["messages"].([]any)[0].(map[string]any)["content"])
	}
}

func TestSingleActionYieldsTypedValue(t *testing.T) {
	t.Parallel()

	input := decode(t, `{"items": [1, "two", {"three": 3}], "n": 42, "f": 1.5, "ok": true, "obj": {"a": [1]}, "nil": null, "s": "str"}`)
	tmpl, err := render.Compile(map[string]any{
		"items":     "{{ .input.items }}",
		"n":         "{{ .input.n }}",
		"f":         "  {{ .input.f }}\n",
		"ok":        "{{.input.ok}}",
		"obj":       "{{ .input.obj }}",
		"nil":       "{{ .input.nil }}",
		"s":         "{{ .input.s }}",
		"trimmed":   "{{- .input.n -}}",
		"upper":     "{{ .input.s | upper }}",
		"two":       "{{ .input.n }}{{ .input.n }}",
		"text":      "n={{ .input.n }}",
		"json":      "{{ json .input.obj }}",
		"prev":      "{{ .steps.first.output }}",
		"prevField": "{{ .steps.first.output.score }}",
		"job":       "{{ .job.id }}/{{ .step.name }}/{{ .step.attempt }}/{{ .step.run }}",
		"len":       "{{ len .input.items }}",
		"cond":      "{{ if .input.ok }}yes{{ end }}",
		"static":    "no template here",
		"number":    7,
		"list":      []any{"{{ .input.n }}", "lit", nil, true},
	})
	require.NoError(t, err)
	require.False(t, tmpl.IsStatic())

	out, err := tmpl.Execute(render.Data{
		Input:    input,
		Steps:    map[string]any{"first": map[string]any{"score": 9.5}},
		JobID:    "j1",
		StepName: "second",
		Attempt:  2,
		Run:      1,
	})
	require.NoError(t, err)
	m := out.(map[string]any)
	require.Equal(t, input.(map[string]any)["items"], m["items"])
	require.Equal(t, json.Number("42"), m["n"])
	require.Equal(t, json.Number("1.5"), m["f"])
	require.Equal(t, true, m["ok"])
	require.Equal(t, map[string]any{"a": []any{json.Number("1")}}, m["obj"])
	require.Nil(t, m["nil"])
	require.Contains(t, m, "nil")
	require.Equal(t, "str", m["s"])
	require.Equal(t, json.Number("42"), m["trimmed"])
	require.Equal(t, "STR", m["upper"])
	require.Equal(t, "4242", m["two"])
	require.Equal(t, "n=42", m["text"])
	require.Equal(t, `{"a":[1]}`, m["json"])
	require.Equal(t, map[string]any{"score": 9.5}, m["prev"])
	require.Equal(t, 9.5, m["prevField"])
	require.Equal(t, "j1/second/2/1", m["job"])
	require.Equal(t, 3, m["len"])
	require.Equal(t, "yes", m["cond"])
	require.Equal(t, "no template here", m["static"])
	require.Equal(t, 7, m["number"])
	require.Equal(t, []any{json.Number("42"), "lit", nil, true}, m["list"])

	b, err := json.Marshal(m["items"])
	require.NoError(t, err)
	require.JSONEq(t, `[1, "two", {"three": 3}]`, string(b))
}

func TestExecuteDoesNotModifyTemplate(t *testing.T) {
	t.Parallel()

	src := map[string]any{"a": map[string]any{"b": "{{ .input.x }}"}, "c": []any{"lit"}}
	tmpl := render.MustCompile(src)
	out, err := tmpl.Execute(render.Data{Input: map[string]any{"x": "1"}})
	require.NoError(t, err)
	out.(map[string]any)["c"].([]any)[0] = "changed"

	out2, err := tmpl.Execute(render.Data{Input: map[string]any{"x": "2"}})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"a": map[string]any{"b": "2"}, "c": []any{"lit"}}, out2)
	require.Equal(t, "{{ .input.x }}", src["a"].(map[string]any)["b"])
}

func TestMissingKeyIsAnError(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		src  any
		want string
	}{
		{"input field", map[string]any{"a": []any{"x {{ .input.nope }}"}}, `a[0]: `},
		{"single action", map[string]any{"a": "{{ .input.nope }}"}, `a: `},
		{"step not run", map[string]any{"b": "{{ .steps.later.output }}"}, `b: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmpl, err := render.Compile(tt.src)
			require.NoError(t, err)
			_, err = tmpl.Execute(render.Data{Input: map[string]any{"yes": 1}})
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), tt.want), err.Error())
			require.Contains(t, err.Error(), "map has no entry for key")
		})
	}
}

func TestOptionalWithIndexAndDefault(t *testing.T) {
	t.Parallel()

	tmpl := render.MustCompile(`{{ index .input "nope" | default "fallback" }}`)
	out, err := tmpl.Execute(render.Data{Input: map[string]any{}})
	require.NoError(t, err)
	require.Equal(t, "fallback", out)
}

func TestCompileErrorNamesPath(t *testing.T) {
	t.Parallel()

	_, err := render.Compile(map[string]any{
		"messages": []any{map[string]any{"content": "{{ .input.x "}},
		"other":    "{{ nosuchfunc .input }}",
	})
	require.Error(t, err)
	require.Contains(t, err.Error(), "messages[0].content: template: ")
	require.Contains(t, err.Error(), `other: template: `)
	require.Contains(t, err.Error(), `function "nosuchfunc" not defined`)

	_, err = render.Compile(map[string]any{"a": struct{}{}})
	require.ErrorContains(t, err, "a: unsupported value of type struct {}")
}

func TestCompileString(t *testing.T) {
	t.Parallel()

	input := decode(t, `{"id": 12, "f": 0.25, "big": 1e21, "obj": {"k": "v <&>"}, "s": "a/b", "nil": null, "list": ["x", 2]}`)
	tests := []struct {
		src  string
		want string
	}{
		{"/items/{{ .input.id }}", "/items/12"},
		{"{{ .input.id }}", "12"},
		{"{{ .input.f }}", "0.25"},
		{"{{ .input.obj }}", `{"k":"v <&>"}`},
		{"{{ .input.nil }}", ""},
		{"{{ .input.s }}", "a/b"},
		{"{{ .input.list | join \",\" }}", "x,2"},
		{"{{ toString .input.obj }}", `{"k":"v <&>"}`},
		{"{{ \"  Mixed \" | trim | lower }}", "mixed"},
		{"{{ .job.id }}", "job-1"},
		{"plain", "plain"},
	}
	for _, tt := range tests {
		tmpl, err := render.CompileString(tt.src)
		require.NoError(t, err, tt.src)
		got, err := tmpl.ExecuteString(render.Data{Input: input, JobID: "job-1"})
		require.NoError(t, err, tt.src)
		require.Equal(t, tt.want, got, tt.src)

		m, err := render.Data{Input: input, JobID: "job-1"}.Map()
		require.NoError(t, err)
		v, err := tmpl.Execute(m)
		require.NoError(t, err, tt.src)
		require.Equal(t, tt.want, v, tt.src)
	}

	f, err := render.Stringify(3.0)
	require.NoError(t, err)
	require.Equal(t, "3", f)
}

func TestDataMap(t *testing.T) {
	t.Parallel()

	m, err := render.Data{Input: "in", Steps: map[string]any{"a": 1}, JobID: "j", StepName: "s", Attempt: 3, Run: 2}.Map()
	require.NoError(t, err)
	require.Equal(t, map[string]any{
		"input": "in",
		"steps": map[string]any{"a": map[string]any{"output": 1}},
		"job":   map[string]any{"id": "j"},
		"step":  map[string]any{"name": "s", "attempt": 3, "run": 2},
	}, m)
}

// TestStoredData checks a Data made from stored JSON: decoded only when read, once for all its
// copies, with numbers kept as their text; the input as stored for who wants JSON; a decoding
// error from Map and from Execute.
func TestStoredData(t *testing.T) {
	t.Parallel()
	in := json.RawMessage(`{"n": 12345678901234567890, "s": "x"}`)
	d := render.Stored("j", "s", 3, 2, in, map[string]json.RawMessage{"a": json.RawMessage(`[1, 2]`), "z": nil})
	raw, err := d.InputJSON()
	require.NoError(t, err)
	require.Equal(t, in, raw, "the input as stored, not decoded")

	m, err := d.Map()
	require.NoError(t, err)
	require.Equal(t, map[string]any{
		"input": map[string]any{"n": json.Number("12345678901234567890"), "s": "x"},
		"steps": map[string]any{"a": map[string]any{"output": []any{json.Number("1"), json.Number("2")}}, "z": map[string]any{"output": nil}},
		"job":   map[string]any{"id": "j"},
		"step":  map[string]any{"name": "s", "attempt": 3, "run": 2},
	}, m)
	copied := d
	m2, err := copied.Map()
	require.NoError(t, err)
	m2["extra"] = 1
	require.NotContains(t, m, "extra", "each Map is a new map")
	require.Equal(t, reflect.ValueOf(m["input"]).Pointer(), reflect.ValueOf(m2["input"]).Pointer(),
		"decoded once for the Data and its copies")

	tmpl, err := render.CompileString("{{ .input.s }}-{{ index .steps.a.output 1 }}")
	require.NoError(t, err)
	got, err := tmpl.ExecuteString(d)
	require.NoError(t, err)
	require.Equal(t, "x-2", got)

	bad := render.Stored("j", "s", 1, 1, json.RawMessage(`{`), nil)
	_, err = bad.Map()
	require.ErrorContains(t, err, "decode job input")
	_, err = tmpl.Execute(bad)
	require.ErrorContains(t, err, "decode job input")

	raw, err = render.Data{Input: map[string]any{"b": 1, "a": "<"}}.InputJSON()
	require.NoError(t, err)
	require.JSONEq(t, `{"a": "<", "b": 1}`, string(raw), "a decoded input is encoded")
	raw, err = render.Data{}.InputJSON()
	require.NoError(t, err)
	require.Nil(t, raw)
}

func TestNilTemplate(t *testing.T) {
	t.Parallel()

	var tmpl *render.Template
	out, err := tmpl.Execute(nil)
	require.NoError(t, err)
	require.Nil(t, out)
	require.True(t, tmpl.IsStatic())
}

func TestConcurrentExecute(t *testing.T) {
	t.Parallel()

	tmpl := render.MustCompile(map[string]any{"v": "{{ .input.n }}"})
	done := make(chan error)
	for i := range 8 {
		go func() {
			for j := range 100 {
				out, err := tmpl.Execute(render.Data{Input: map[string]any{"n": i*1000 + j}})
				if err == nil && out.(map[string]any)["v"] != i*1000+j {
					err = &render.PathError{Path: "v", Err: errMismatch}
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		require.NoError(t, <-done)
	}
}

var errMismatch = errorString("captured value of another execution")

type errorString string

func (e errorString) Error() string { return string(e) }

func TestValuesInsideStringsPrintAsJSON(t *testing.T) {
	t.Parallel()

	tmpl := render.MustCompile(`a={{ .input.obj }} n={{ .input.n }} f={{ .input.f }} nil=[{{ .input.nil }}] {{ range .input.list }}<{{ . }}>{{ end }}{{ if true }}{{ .input.obj }}{{ end }}{{ $x := 1 }}{{ $x }}`)
	out, err := tmpl.Execute(render.Data{Input: map[string]any{
		"obj": map[string]any{"k": []any{1, "two"}}, "n": 1000000.0, "f": 0.5, "nil": nil, "list": []any{"x", 2.0},
	}})
	require.NoError(t, err)
	require.Equal(t, `a={"k":[1,"two"]} n=1000000 f=0.5 nil=[] <x><2>{"k":[1,"two"]}1`, out)
}

package render_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/render"
)

// fuzzInput decodes b as the API decodes job input (numbers as json.Number); bytes that are not JSON
// are used as a string, so templates also see NULs and invalid UTF-8.
func fuzzInput(b []byte) any {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return string(b)
	}
	return v
}

func fuzzData(input any) render.Data {
	return render.Data{
		Input:    input,
		Steps:    map[string]any{"a": input, "b": map[string]any{"score": json.Number("0.5"), "tags": []any{"x", "y"}}},
		JobID:    "5f0c1b2e-0000-4000-8000-000000000001",
		StepName: "s",
		Attempt:  2,
		Run:      1,
	}
}

// jsonOf encodes a value for comparisons; values that JSON cannot hold are compared by %#v.
func jsonOf(v any) string {
	b, err := render.MarshalJSON(v)
	if err != nil {
		return "unencodable " + reflect.TypeOf(v).String()
	}
	return string(b)
}

// expensive reports templates that loop over integer constants, nest loops deeply or may call
// themselves: text/template ranges over 1e9 as readily as over a list, and recurses 100,000 deep
// before it fails, which would only measure the machine.
func expensive(tmpl string) bool {
	n := strings.Count(tmpl, "range")
	return n > 2 || (n > 0 && strings.ContainsAny(tmpl, "0123456789")) ||
		strings.Count(tmpl, "template")+strings.Count(tmpl, "block") > 1
}

// FuzzRender compiles any string as a template and renders it over any input. Compile and
// CompileString agree; a string without "{{" is static and renders to itself; rendering is
// deterministic and changes neither the template nor the data; and a template placed inside an object
// and a list renders to the same value there, or fails at that path.
func FuzzRender(f *testing.F) {
	for _, s := range []struct{ tmpl, input string }{
		{"plain text, no actions", `{}`},
		{"{{ .input.name }}", `{"name": "Ada"}`},
		{"Market for {{ .input.name }}!", `{"name": "He said \"hi\"\n</script> & <b>"}`},
		{"{{ .input.items }}", `{"items": [1, "two", {"three": 3}, null, true]}`},
		{"  {{ .input.n }}\n", `{"n": 1e999999}`},
		{"n={{ .input.n }} f={{ .input.f }}", `{"n": 12345678901234567890123, "f": -0.0}`},
		{"{{ json .input }}", `{"a": {"b": [1, 2, {"c": "\u0000"}]}, "d": "\ud800"}`},
		{"{{ index .input \"nope\" | default \"x\" }}", `{}`},
		{"{{ .input.nope }}", `{}`},
		{"{{ .steps.a.output.x }}/{{ .steps.b.output.score }}", `{"x": [1]}`},
		{"{{ .job.id }}/{{ .step.name }}/{{ .step.attempt }}/{{ .step.run }}", `null`},
		{"{{ range .input }}[{{ . }}]{{ else }}none{{ end }}", `[1, "a", {"k": "v"}]`},
		{"{{ with .input.s }}{{ . | upper | trim }}{{ end }}", `{"s": "  héllo wörld "}`},
		{"{{ .input.tags | join \", \" }}", `{"tags": ["a", 1, null, {"x": 1}]}`},
		{"{{ $x := .input }}{{ $x }}", `"v"`},
		{"{{ if .input }}yes{{ else }}no{{ end }}", `false`},
		{"{{ toString .input }}|{{ lower \"ÀB\" }}|{{ printf \"%q\" .input }}", `{"z": 1, "a": 2}`},
		{"{{ define \"t\" }}{{ .input }}{{ end }}{{ template \"t\" . }}", `"defined"`},
		{"{{ .input", `{}`},
		{"{{ nosuchfunc }}", `{}`},
		{"{{ 1i }}", `{}`},
		{"\x00{{ .input }}\xff", "\x00\xff"},
		{"{{ .input }}", "1e999999"},
		{"{{ .input }}", strings.Repeat("[", 2000) + strings.Repeat("]", 2000)},
		{"{{ .input }}" + strings.Repeat("x", 1<<14), `"` + strings.Repeat("y", 1<<14) + `"`},
	} {
		f.Add(s.tmpl, []byte(s.input))
	}
	f.Fuzz(func(t *testing.T, tmpl string, in []byte) {
		if expensive(tmpl) {
			return // a template that loops over large constants: nothing to learn, only time to lose
		}
		tv, err := render.Compile(tmpl)
		ts, errS := render.CompileString(tmpl)
		require.Equal(t, err == nil, errS == nil, "Compile and CompileString agree")
		if err != nil {
			require.True(t, strings.Contains(tmpl, "{{"), "only a string with an action can fail to compile: %v", err)
			var pe *render.PathError
			require.True(t, errors.As(err, &pe), "compile errors are PathErrors: %T", err)
			require.Empty(t, pe.Path)
			return
		}
		require.Equal(t, tmpl, tv.Source())
		if !strings.Contains(tmpl, "{{") {
			require.True(t, tv.IsStatic())
		}

		input := fuzzInput(in)
		before := jsonOf(input)
		data := fuzzData(input)
		out, err := tv.Execute(data)
		out2, err2 := tv.Execute(data)
		require.Equal(t, err == nil, err2 == nil, "deterministic: %v / %v", err, err2)
		require.Equal(t, before, jsonOf(input), "Execute changed the data")
		require.Equal(t, tmpl, tv.Source(), "Execute changed the template")
		if tv.IsStatic() {
			require.NoError(t, err)
			require.Equal(t, tmpl, out, "a static string renders to itself")
		}
		if err != nil {
			require.Equal(t, err.Error(), err2.Error(), "deterministic")
			var pe *render.PathError
			require.True(t, errors.As(err, &pe), "execute errors are PathErrors: %T", err)
		} else {
			require.Equal(t, jsonOf(out), jsonOf(out2), "deterministic")
		}

		// CompileString yields the stringified value.
		str, errS := ts.ExecuteString(data)
		if err == nil {
			want, werr := render.Stringify(out)
			require.Equal(t, werr == nil, errS == nil, "%v / %v", werr, errS)
			if werr == nil {
				require.Equal(t, want, str)
				if s, ok := out.(string); ok {
					require.Equal(t, s, str)
				}
			}
		} else {
			require.Error(t, errS)
		}

		// Inside an object and a list, the same value at the same place.
		doc, cerr := render.Compile(map[string]any{"k": tmpl, "l": []any{1, tmpl, nil}})
		require.NoError(t, cerr)
		got, gerr := doc.Execute(data)
		if err != nil {
			require.Error(t, gerr)
			var pe *render.PathError
			require.True(t, errors.As(gerr, &pe))
			require.Equal(t, "k", pe.Path, "the first failing string in key order")
			return
		}
		require.NoError(t, gerr)
		m := got.(map[string]any)
		require.Equal(t, jsonOf(out), jsonOf(m["k"]))
		l := m["l"].([]any)
		require.Len(t, l, 3)
		require.Equal(t, 1, l[0])
		require.Equal(t, jsonOf(out), jsonOf(l[1]))
		require.Nil(t, l[2])
	})
}

// FuzzRenderData renders fixed, realistic templates over any input string and any JSON input: what
// the input holds comes out exactly as it went in (a single action is the value itself, text around
// an action is kept, json re-encodes to the same value), so input can never change the shape of a
// rendered request body.
func FuzzRenderData(f *testing.F) {
	f.Add("Ada", []byte(`{"items": [1, 2], "n": 3}`))
	f.Add(`{"injected": true}, "x": "`, []byte(`{"a": "</script>"}`))
	f.Add("{{ .input.name }}", []byte(`[{"{{": "}}"}]`))
	f.Add("line one\nline two\r\n\ttabbed \"q\" \\ 🚀 市场", []byte(`1e999999`))
	f.Add("\x00", []byte("{\"s\": \"\\u0000\"}"))
	f.Add("\xff\xfe", []byte("\"\xff\""))
	f.Add("", []byte(strings.Repeat(`{"a":`, 500)+"1"+strings.Repeat("}", 500)))
	tmpl := render.MustCompile(map[string]any{
		"model":    "small",
		"messages": []any{map[string]any{"role": "user", "content": "Market for {{ .input.s }}!"}},
		"raw":      "{{ .input.s }}",
		"quoted":   `"{{ .input.s }}"`,
		"doc":      "{{ .input.doc }}",
		"json":     "{{ json .input.doc }}",
		"text":     "doc={{ .input.doc }}",
		"prev":     "{{ .steps.a.output.doc }}",
	})
	f.Fuzz(func(t *testing.T, s string, in []byte) {
		doc := fuzzInput(in)
		input := map[string]any{"s": s, "doc": doc}
		out, err := tmpl.Execute(fuzzData(input))
		require.NoError(t, err)
		m := out.(map[string]any)
		require.Equal(t, "small", m["model"])
		require.Equal(t, "Market for "+s+"!", m["messages"].([]any)[0].(map[string]any)["content"])
		require.Equal(t, s, m["raw"])
		require.Equal(t, `"`+s+`"`, m["quoted"])
		require.Equal(t, jsonOf(doc), jsonOf(m["doc"]), "a single action is the value itself")
		require.Equal(t, jsonOf(doc), jsonOf(m["prev"]))
		want, serr := render.Stringify(doc)
		require.NoError(t, serr)
		require.Equal(t, "doc="+want, m["text"])
		require.Equal(t, jsonOf(doc), m["json"])

		// Through JSON, as the body is sent: the same strings come back (invalid UTF-8 as U+FFFD).
		b, err := render.MarshalJSON(out)
		require.NoError(t, err)
		back, ok := fuzzInput(b).(map[string]any)
		require.True(t, ok, "%s", b)
		require.Len(t, back, len(m))
		require.Equal(t, coerceUTF8(s), back["raw"])
		require.Equal(t, "Market for "+coerceUTF8(s)+"!", back["messages"].([]any)[0].(map[string]any)["content"])
	})
}

// coerceUTF8 is what encoding/json makes of a string: each byte that is not UTF-8 becomes U+FFFD.
func coerceUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:]) // utf8.RuneError for a byte that is not UTF-8
		b.WriteRune(r)
		i += size
	}
	return b.String()
}

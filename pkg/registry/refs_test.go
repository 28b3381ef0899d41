package registry

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStepRefsSyntax(t *testing.T) {
	t.Parallel()

	named := func(expr, name string) stepRef { return stepRef{expr: expr, kind: refNamed, name: name} }
	tests := []struct {
		text string
		want []stepRef
	}{
		{`{{ .input.x }} {{ .job.id }} {{ .step.name }}`, nil},
		{`{{ .steps.a.output }}`, []stepRef{named(".steps.a.output", "a")}},
		{`{{ $.steps.a.output.x }}`, []stepRef{named("$.steps.a.output.x", "a")}},
		{`{{ (.steps.b).output }}`, []stepRef{named("(.steps.b).output", "b")}},
		{`{{ (index .steps "c").output }}`, []stepRef{named(`(index .steps "c").output`, "c")}},
		{`{{ index $.steps "d" "output" }}`, []stepRef{named(`index $.steps "d" "output"`, "d")}},
		{`{{ index . "steps" "e" }}`, []stepRef{named(`index . "steps" "e"`, "e")}},
		{`{{ .steps.a.output | json | printf "%s" }}`, []stepRef{named(".steps.a.output", "a")}},
		{`{{ if and .steps.a .steps.b }}x{{ else if .steps.c }}y{{ end }}`, []stepRef{
			named(".steps.a", "a"), named(".steps.b", "b"), named(".steps.c", "c"),
		}},
		{`{{ with .input }}{{ .steps.a }}{{ end }}{{ range .input.list }}{{ .steps.b }}{{ end }}`, nil},
		{`{{ with .input }}{{ $.steps.a }}{{ else }}{{ .steps.b }}{{ end }}`, []stepRef{
			named("$.steps.a", "a"), named(".steps.b", "b"),
		}},
		{`{{ with $ }}{{ .steps.a }}{{ end }}`, []stepRef{{expr: "$", kind: refAll}, named(".steps.a", "a")}},
		{`{{ $o := .steps.a.output }}{{ $o.steps.zz }}`, []stepRef{named(".steps.a.output", "a")}},
		{`{{ define "t" }}{{ .steps.a }}{{ end }}{{ template "t" . }}`, []stepRef{named(".steps.a", "a")}},
		{`{{ index .steps .input.name }}`, []stepRef{{expr: "index .steps .input.name", kind: refDynamic}}},
		{`{{ index . .input.k }}`, []stepRef{{expr: "index . .input.k", kind: refDynamic}}},
		{`{{ range $k, $v := .steps }}{{ $k }}{{ end }}`, []stepRef{{expr: ".steps", kind: refAll}}},
		{`{{ len .steps }}`, []stepRef{{expr: ".steps", kind: refAll}}},
		{`{{ $d := . }}{{ $d.steps.a }}`, []stepRef{{expr: ".", kind: refAll}}},
		{`{{ index . "steps" }}`, []stepRef{{expr: `index . "steps"`, kind: refAll}}},
	}
	for _, tt := range tests {
		got, err := stepRefs(tt.text)
		require.NoError(t, err, tt.text)
		require.Equal(t, tt.want, got, tt.text)
	}

	_, err := stepRefs("{{ .steps.a ")
	require.Error(t, err)
}

package caller

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
)

// TestCallWithParsedRegistry runs the caller on what the registry loader produces from YAML.
func TestCallWithParsedRegistry(t *testing.T) {
	t.Parallel()

	var gotAuth, gotKey string
	var gotBody map[string]any
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotKey = r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key")
		require.Equal(t, "/v1/chat/completions", r.URL.Path)
		require.NoError(t, json.NewDecoder(r.Body).Decode(&gotBody))
		_, _ = io.WriteString(w, `{"choices": [{"message": {"content": "ok, key was `+gotAuth+`"}}]}`)
	})

	const doc = `
services:
  llm:
    kind: http
    base_url: ${LLM_BASE_URL}/v1
    headers: {Authorization: "Bearer ${LLM_API_KEY}"}
    timeout: 5s
  sim:
    kind: mock
    fail_times: 1
features:
  plan:
    steps:
      - name: research
        service: llm
        request:
          path: /chat/completions
          body: {model: small, messages: [{role: user, content: "Market for {{ .input.business_name }}"}]}
      - name: summary
        service: sim
        needs: [research]
`
	env := map[string]string{"LLM_BASE_URL": b.srv.URL, "LLM_API_KEY": "sk-live-abcdef123456"}
	reg, err := registry.Parse("registry.yaml", []byte(doc), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	require.NoError(t, err)
	feat := reg.Features["plan"]
	research, ok := feat.Step("research")
	require.True(t, ok)

	call := newCall(reg.Services["llm"], research, map[string]any{"business_name": `Joe's "Café"`}, 1, 1)
	res, err := b.caller.Call(t.Context(), call)
	require.NoError(t, err)
	require.Equal(t, "Bearer sk-live-abcdef123456", gotAuth)
	require.Equal(t, "job-1/research/1", gotKey)
	require.Equal(t, `Market for Joe's "Café"`, gotBody["messages"].([]any)[0].(map[string]any)["content"])
	require.NotContains(t, string(res.Output), "sk-live-abcdef123456")
	require.Contains(t, string(res.Output), "[REDACTED]")

	summary, ok := feat.Step("summary")
	require.True(t, ok)
	sim := reg.Services["sim"]
	_, err = b.caller.Call(t.Context(), newCall(sim, summary, nil, 1, 1))
	require.Equal(t, ClassMock, requireError(t, err).Class)
	res, err = b.caller.Call(t.Context(), newCall(sim, summary, nil, 1, 2))
	require.NoError(t, err)
	require.Contains(t, string(res.Output), `"step":"summary"`)
}

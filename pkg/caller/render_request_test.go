package caller

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
)

// TestRenderRequestIsWhatTheCallSends: the request a budget's reserve reads is the one the call
// sends, rendered by the same code, without the headers (which hold the secrets).
func TestRenderRequestIsWhatTheCallSends(t *testing.T) {
	t.Parallel()
	var sent *http.Request
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		sent = r
		_, _ = w.Write([]byte(`{}`))
	})
	step := newStep(request(t, "post", "/v1/{{ .input.model }}/chat", map[string]string{"user": "{{ .input.user }}"},
		map[string]string{"X-Key": "{{ .input.user }}"},
		map[string]any{"max_tokens": "{{ .input.max_tokens }}", "messages": []any{"{{ .input.q }}"}}))
	call := newCall(b.svc, step, map[string]any{"model": "a/b", "user": "u 1", "max_tokens": 512, "q": "hi"}, 1, 1)
	r, err := RenderRequest(call)
	require.NoError(t, err)
	require.Equal(t, &Request{
		Method: "POST", Path: "/v1/a%2Fb/chat", Query: map[string]string{"user": "u 1"},
		Body: map[string]any{"max_tokens": 512, "messages": []any{"hi"}}, HasBody: true,
	}, r)
	require.Equal(t, map[string]any{
		"method": "POST", "path": "/v1/a%2Fb/chat", "query": map[string]any{"user": "u 1"},
		"body": map[string]any{"max_tokens": 512, "messages": []any{"hi"}},
	}, r.Data())
	require.NotContains(t, r.Data(), "headers", "headers hold secrets")

	_, err = b.caller.Call(t.Context(), call)
	require.NoError(t, err)
	require.Equal(t, "/v1/a%2Fb/chat", sent.URL.EscapedPath())
	require.Equal(t, "u 1", sent.URL.Query().Get("user"))

	// The default request of an http step, a mock service and a template error.
	r, err = RenderRequest(newCall(b.svc, newStep(nil), nil, 1, 1))
	require.NoError(t, err)
	require.Equal(t, &Request{Method: "POST", Path: "", Query: map[string]string{}, Body: map[string]any{}, HasBody: true}, r)
	mock := &registry.Service{Name: "sim", Kind: registry.KindMock}
	r, err = RenderRequest(newCall(mock, &registry.Step{Name: "s", Service: "sim"}, nil, 1, 1))
	require.NoError(t, err)
	require.Nil(t, r)
	require.Equal(t, map[string]any{}, r.Data(), "a mock service's .request is an empty object")
	_, err = RenderRequest(newCall(b.svc, step, map[string]any{}, 1, 1))
	ce := requireError(t, err)
	require.Equal(t, ClassTemplate, ce.Class)
}

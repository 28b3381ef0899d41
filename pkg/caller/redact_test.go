package caller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
)

// Secrets with every character an encoder rewrites: / + = & < > " and spaces.
var echoSecrets = map[string]string{
	"API_KEY":    `hdr/KEY+1=2&<a> "b" c`,
	"STEP_KEY":   `step key/+=&<>"x"`,
	"QUERY_KEY":  `qs/SEC+RET=42 & <b> "z"`,
	"PATH_TOKEN": `pt-TOKEN+42=x&y`,
}

var upperHex = regexp.MustCompile(`%[0-9A-F]{2}`)

// leakForms returns, for every secret, the forms in which it must never be seen: plain, query- and
// path-escaped (upper and lower hex), and JSON-escaped (HTML-safe or not, "/" as "\/"). They are
// computed here, independently of registry.SecretForms.
func leakForms(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, s := range echoSecrets {
		add := func(kind, f string) { out[name+" "+kind] = f }
		add("plain", s)
		add("query", url.QueryEscape(s))
		add("query lowercase", upperHex.ReplaceAllStringFunc(url.QueryEscape(s), strings.ToLower))
		add("path", url.PathEscape(s))
		add("path lowercase", upperHex.ReplaceAllStringFunc(url.PathEscape(s), strings.ToLower))
		htmlSafe, err := json.Marshal(s)
		require.NoError(t, err)
		inner := strings.Trim(string(htmlSafe), `"`)
		add("json", inner)
		add("json \\/", strings.ReplaceAll(inner, "/", `\/`))
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		require.NoError(t, enc.Encode(s))
		plain := strings.Trim(strings.TrimSpace(buf.String()), `"`)
		add("json plain", plain)
		add("json plain \\/", strings.ReplaceAll(plain, "/", `\/`))
	}
	return out
}

func requireNoLeak(t *testing.T, forms map[string]string, where, text string) {
	t.Helper()
	for name, f := range forms {
		require.NotContains(t, text, f, "%s leaks %s", where, name)
	}
}

// requireCleanOutput checks the stored output as text, and every string inside it once decoded
// (strings that hold JSON documents are decoded in turn).
func requireCleanOutput(t *testing.T, forms map[string]string, out json.RawMessage) {
	t.Helper()
	require.True(t, json.Valid(out), "output is valid JSON: %s", out)
	requireNoLeak(t, forms, "output", string(out))
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			requireNoLeak(t, forms, "a decoded output string", x)
			var inner any
			if json.Unmarshal([]byte(x), &inner) == nil {
				walk(inner)
			}
		case map[string]any:
			for k, e := range x {
				requireNoLeak(t, forms, "a decoded output key", k)
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	var v any
	require.NoError(t, json.Unmarshal(out, &v))
	walk(v)
}

// echoView is what the echo server sends back for ?view=NAME.
func echoView(r *http.Request, body []byte) (string, string) {
	all := map[string]any{
		"url":         r.URL.String(),
		"request_uri": r.RequestURI,
		"headers":     r.Header,
		"body":        string(body),
	}
	htmlSafe, _ := json.Marshal(all) // Go's default: <, > and & as \u003c \u003e \u0026
	var plain bytes.Buffer
	enc := json.NewEncoder(&plain)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(all)
	lower := upperHex.ReplaceAllStringFunc(r.RequestURI, strings.ToLower)
	escapedHeaders := map[string]string{}
	for k := range r.Header {
		escapedHeaders[k] = url.PathEscape(r.Header.Get(k)) + " " + url.QueryEscape(r.Header.Get(k))
	}
	switch r.URL.Query().Get("view") {
	case "html":
		return "application/json", string(htmlSafe)
	case "plain":
		return "application/json", plain.String()
	case "php": // "/" escaped as "\/"
		return "application/json", strings.ReplaceAll(string(htmlSafe), "/", `\/`)
	case "lower":
		b, _ := json.Marshal(map[string]any{"uri": lower})
		return "application/json", string(b)
	case "encoded-headers":
		b, _ := json.Marshal(escapedHeaders)
		return "application/json", string(b)
	case "nested": // a JSON document inside a JSON string
		b, _ := json.Marshal(map[string]any{"doc": string(htmlSafe), "php": strings.ReplaceAll(string(htmlSafe), "/", `\/`)})
		return "application/json", string(b)
	case "text":
		return "text/plain", fmt.Sprintf("GET %s\nlower %s\nheaders %v\nencoded %v\nbody %s", r.RequestURI, lower, r.Header, escapedHeaders, body)
	}
	return "text/plain", "unknown view"
}

// TestCallRedactsEncodedSecrets runs a step against a service that echoes the full request (URL,
// headers, body) in every encoding, in a 200 answer and in an error body: no form of any secret
// reaches the output, the error, or the next step's request.
func TestCallRedactsEncodedSecrets(t *testing.T) {
	t.Parallel()

	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ct, text := echoView(r, body)
		w.Header().Set("Content-Type", ct)
		if r.URL.Query().Get("fail") == "1" {
			w.WriteHeader(http.StatusBadRequest)
		}
		_, _ = io.WriteString(w, text)
	}))
	t.Cleanup(echo.Close)
	var forwarded []string
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		forwarded = append(forwarded, r.RequestURI+"\n"+fmt.Sprint(r.Header)+"\n"+string(body))
		_, _ = io.WriteString(w, `{}`)
	}))
	t.Cleanup(sink.Close)

	env := map[string]string{"ECHO_URL": echo.URL, "SINK_URL": sink.URL}
	for k, v := range echoSecrets {
		env[k] = v
	}
	reg, err := registry.Parse("registry.yaml", []byte(`
services:
  echo:
    base_url: ${ECHO_URL}
    headers: {Authorization: "Bearer ${API_KEY}"}
  sink:
    base_url: ${SINK_URL}
features:
  f:
    steps:
      - name: call
        service: echo
        request:
          method: POST
          path: /v1/bot${PATH_TOKEN}/echo
          query: {key: "${QUERY_KEY}", view: "{{ .input.view }}", fail: "{{ .input.fail }}"}
          headers: {X-Step-Key: "${STEP_KEY}"}
          body: {q: "{{ .input.view }}"}
      - name: forward
        service: sink
        needs: [call]
        request:
          method: POST
          path: "/in/{{ .steps.call.output }}"
          query: {p: "{{ json .steps.call.output }}"}
          body: {prev: "{{ .steps.call.output }}", text: "x {{ .steps.call.output }}"}
`), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	require.NoError(t, err)
	feat := reg.Features["f"]
	call, _ := feat.Step("call")
	forward, _ := feat.Step("forward")
	echoSvc, sinkSvc := reg.Services["echo"], reg.Services["sink"]
	forms := leakForms(t)
	c := New(Config{})

	for _, view := range []string{"html", "plain", "php", "lower", "encoded-headers", "nested", "text"} {
		t.Run(view, func(t *testing.T) {
			// Success: the output is clean, and so is the request of the step that uses it.
			res, err := c.Call(t.Context(), newCall(echoSvc, call, map[string]any{"view": view, "fail": "0"}, 1, 1))
			require.NoError(t, err)
			requireCleanOutput(t, forms, res.Output)
			require.Contains(t, string(res.Output), "[REDACTED]", "the echo held secrets")
			requireNoLeak(t, forms, "result", fmt.Sprintf("%+v", res))

			var out any
			require.NoError(t, json.Unmarshal(res.Output, &out))
			next := newCall(sinkSvc, forward, map[string]any{}, 1, 1)
			next.Data.Steps = map[string]any{"call": out}
			_, err = c.Call(t.Context(), next)
			require.NoError(t, err)
			require.NotEmpty(t, forwarded)
			got := forwarded[len(forwarded)-1]
			requireNoLeak(t, forms, "the next step's request", got)
			if unq, err := url.PathUnescape(got); err == nil {
				requireNoLeak(t, forms, "the next step's request, unescaped", unq)
			}

			// Failure: the same echo in an error body.
			res, err = c.Call(t.Context(), newCall(echoSvc, call, map[string]any{"view": view, "fail": "1"}, 1, 1))
			ce := requireError(t, err)
			require.Equal(t, http.StatusBadRequest, ce.HTTPStatus)
			require.Equal(t, ClassHTTPStatus, ce.Class)
			requireNoLeak(t, forms, "error message", ce.Message)
			requireNoLeak(t, forms, "error", err.Error())
			requireNoLeak(t, forms, "result of a failed call", fmt.Sprintf("%+v", res))
			require.Contains(t, ce.Message, "[REDACTED]", "the echo held secrets")
		})
	}
}

// TestRenderedPathCannotAddQuery checks that nothing a path template renders can end the path: data
// strings are path-escaped, and a "?" or "#" produced otherwise (an object key printed as JSON, a
// number printed as a character) is escaped too.
func TestRenderedPathCannotAddQuery(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		path string
		want string // the escaped path the server sees
	}{
		{"string value", "/items/{{ .input.s }}", "/v1/items/a%3Fadmin=1%23frag"},
		{"object key", "/items/{{ json .input.obj }}", `/v1/items/%7B%22k%3Fx=1%23y%22:%22a%3Fb%22%7D`},
		{"number as character", `/items/{{ printf "%c%c" .input.q .input.h }}x`, "/v1/items/%3F%23x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got *http.Request
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				got = r.Clone(context.Background())
				_, _ = io.WriteString(w, `{}`)
			})
			b.svc.BaseURL = b.srv.URL + "/v1?base=1"
			step := newStep(request(t, "GET", tt.path, nil, nil, nil))
			input := map[string]any{"s": "a?admin=1#frag", "obj": map[string]any{"k?x=1#y": "a?b"}, "q": 63, "h": 35}
			_, err := b.caller.Call(t.Context(), newCall(b.svc, step, input, 1, 1))
			require.NoError(t, err)
			require.Equal(t, tt.want, got.URL.EscapedPath())
			require.Equal(t, "base=1", got.URL.RawQuery, "only the base URL's query")
		})
	}

	// A path without templates keeps its literal query (the registry allows it there only).
	var got *http.Request
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(context.Background())
		_, _ = io.WriteString(w, `{}`)
	})
	_, err := b.caller.Call(t.Context(), newCall(b.svc, newStep(request(t, "GET", "/search?format=json", nil, nil, nil)), nil, 1, 1))
	require.NoError(t, err)
	require.Equal(t, "/search", got.URL.Path)
	require.Equal(t, "format=json", got.URL.RawQuery)
}

package registry

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// trickySecret holds every character an encoder treats specially.
const trickySecret = `a/b+c=d&e<f>g"h i\j'k%2Fé🚀`

var percentHex = regexp.MustCompile(`%[0-9A-F]{2}`)

// encodings of s computed here, independently of SecretForms.
func encodings(t *testing.T, s string) map[string]string {
	t.Helper()
	htmlSafe, err := json.Marshal(s)
	require.NoError(t, err)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(s))
	plain := strings.Trim(strings.TrimSpace(buf.String()), `"`)
	inner := strings.Trim(string(htmlSafe), `"`)
	lowerPct := func(x string) string { return percentHex.ReplaceAllStringFunc(x, strings.ToLower) }
	return map[string]string{
		"plain":               s,
		"query":               url.QueryEscape(s),
		"query lowercase":     lowerPct(url.QueryEscape(s)),
		"query %20":           strings.ReplaceAll(url.QueryEscape(s), "+", "%20"),
		"path":                url.PathEscape(s),
		"path lowercase":      lowerPct(url.PathEscape(s)),
		"json html-safe":      inner,
		"json plain":          plain,
		"json \\/":            strings.ReplaceAll(inner, "/", `\/`),
		"json plain \\/":      strings.ReplaceAll(plain, "/", `\/`),
		"json of query":       strings.Trim(string(must(json.Marshal(url.QueryEscape(s)))), `"`),
		"json of path":        strings.Trim(string(must(json.Marshal(url.PathEscape(s)))), `"`),
		"base64":              base64.StdEncoding.EncodeToString([]byte(s)),
		"base64 url unpadded": base64.RawURLEncoding.EncodeToString([]byte(s)),
	}
}

func TestSecretFormsCoverEncodings(t *testing.T) {
	t.Parallel()

	forms := SecretForms(trickySecret)
	for name, enc := range encodings(t, trickySecret) {
		require.Contains(t, forms, enc, name)
	}
	require.Contains(t, forms, `a/b+c=d&amp;e&lt;f&gt;g&#34;h i\j&#39;k%2Fé🚀`, "html")
	require.Contains(t, forms, `a/b+c=d&e<f>g\"h i\\j'k%2F\u00e9\ud83d\ude80`, "python json.dumps")
	require.Empty(t, SecretForms(""))
	require.Equal(t, []string{"abcd1234", "YWJjZDEyMzQ=", "YWJjZDEyMzQ"}, SecretForms("abcd1234"), "no duplicates")
}

func TestRedactEveryForm(t *testing.T) {
	t.Parallel()

	svc := &Service{Secrets: secretList([]string{trickySecret, "Bearer tok/EN+1"})}
	encs := encodings(t, trickySecret)
	for name, enc := range encs {
		text := "before " + enc + " after"
		require.Equal(t, "before [REDACTED] after", svc.Redact(text), name)
	}
	// The longest form wins where forms overlap: no fragment of the secret is left around the mark.
	require.Equal(t, "x [REDACTED] y", svc.Redact("x Bearer tok/EN+1 y"))
	require.Equal(t, "x [REDACTED] y", svc.Redact("x Bearer%20tok%2FEN%2B1 y"))

	// In a JSON document, as the common encoders write it, the secret and its URL encodings are
	// redacted in the raw text and the document stays valid.
	doc := map[string]any{}
	for _, name := range []string{"plain", "query", "query lowercase", "query %20", "path", "path lowercase"} {
		doc[name] = "v=" + encs[name] + ";"
	}
	for _, html := range []bool{true, false} {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(html)
		require.NoError(t, enc.Encode(doc))
		for _, text := range []string{buf.String(), strings.ReplaceAll(buf.String(), "/", `\/`)} {
			out := svc.Redact(text)
			require.True(t, json.Valid([]byte(out)), out)
			for name, e := range encs {
				require.NotContains(t, out, e, name)
			}
			var got map[string]string
			require.NoError(t, json.Unmarshal([]byte(out), &got))
			for name := range doc {
				require.Equal(t, "v=[REDACTED];", got[name], name)
			}
		}
	}
}

func TestRedactFollowsTheSecretList(t *testing.T) {
	t.Parallel()

	svc := &Service{Secrets: []string{"abcd1234"}}
	require.Equal(t, "[REDACTED]", svc.Redact("abcd1234"))
	svc.Secrets[0] = "wxyz9876" // changed in place: the cached replacer must not be trusted
	require.Equal(t, "[REDACTED] abcd1234", svc.Redact("wxyz9876 abcd1234"))
	svc.Secrets = append(svc.Secrets, "abcd1234")
	require.Equal(t, "[REDACTED] [REDACTED]", svc.Redact("wxyz9876 abcd1234"))
	require.Equal(t, "nothing", (&Service{}).Redact("nothing"))
}

func TestRedactorBuiltAtLoad(t *testing.T) {
	t.Parallel()

	reg, err := Parse("r.yaml", []byte(`
services:
  api: {base_url: "https://x.example", headers: {X-Key: "${KEY}"}}
`), func(k string) (string, bool) { return "key/" + k + "+value", true })
	require.NoError(t, err)
	svc := reg.Services["api"]
	v, ok := redactors.m.Load(redactorKey{first: &svc.Secrets[0], n: len(svc.Secrets)})
	require.True(t, ok, "the loader builds the replacer")
	require.Equal(t, svc.Secrets, v.(*redactor).secrets)
	require.Equal(t, "[REDACTED]", svc.Redact("key%2FKEY%2Bvalue"))
}

package registry

// This file holds what the registry treats as secret and how secrets are redacted.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// minSecretLen is the shortest value collected as a secret: redacting "1", "on" or "GET" everywhere
// would garble logs without protecting anything.
const minSecretLen = 4

// redacted replaces every form of a secret.
const redacted = "[REDACTED]"

// secretsOf collects the expanded values found under n.
func (l *loader) secretsOf(n *yaml.Node) []string {
	var out []string
	seen := map[*yaml.Node]bool{}
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil || seen[n] {
			return
		}
		seen[n] = true
		if e, ok := l.exp[n]; ok {
			out = append(out, e.values...)
		}
		if n.Kind == yaml.AliasNode {
			walk(n.Alias)
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return out
}

// secretList drops short values and duplicates and sorts longest first, the order Redact needs.
func secretList(in []string) []string {
	var out []string
	for _, s := range in {
		if len(s) >= minSecretLen && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redact replaces every secret in text with "[REDACTED]", in every form in which a secret can reach
// text (see SecretForms): plain, URL-encoded, JSON-escaped, HTML-escaped, base64. Longest forms are
// tried first, so a secret containing another is hidden whole.
//
// The replacer of a list of secrets is built once and kept (see redactorFor): the loader builds the
// one of every service when it loads the file, so a call pays only for the replacement itself.
func redact(secrets []string, text string) string {
	if len(secrets) == 0 || text == "" {
		return text
	}
	return redactorFor(secrets).replace(text)
}

// redactor replaces every form of a list of secrets.
type redactor struct {
	secrets []string          // a copy of the list it was built from, to check a cache hit
	r       *strings.Replacer // nil: nothing to replace
}

func newRedactor(secrets []string) *redactor {
	forms := map[string]bool{}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, f := range SecretForms(s) {
			forms[f] = true
		}
	}
	list := make([]string, 0, len(forms))
	for f := range forms {
		list = append(list, f)
	}
	// strings.Replacer tries the old strings in argument order at each position: longest first wins.
	sort.Slice(list, func(i, j int) bool {
		if len(list[i]) != len(list[j]) {
			return len(list[i]) > len(list[j])
		}
		return list[i] < list[j]
	})
	rd := &redactor{secrets: slices.Clone(secrets)}
	if len(list) > 0 {
		pairs := make([]string, 0, 2*len(list))
		for _, f := range list {
			pairs = append(pairs, f, redacted)
		}
		rd.r = strings.NewReplacer(pairs...)
	}
	return rd
}

func (rd *redactor) replace(text string) string {
	if rd.r == nil || text == "" {
		return text
	}
	return rd.r.Replace(text)
}

// redactorKey identifies a list of secrets by its backing array and length; a hit is confirmed by
// comparing the contents, so a list changed in place or a reused address is never trusted.
type redactorKey struct {
	first *string
	n     int
}

// maxRedactors bounds the cache; services are loaded once per process, so it only matters to
// programs (tests) that build many services by hand.
const maxRedactors = 1024

var redactors struct {
	m sync.Map // redactorKey -> *redactor
	n atomic.Int64
}

// redactorFor returns the cached redactor of secrets, building it on a miss.
func redactorFor(secrets []string) *redactor {
	key := redactorKey{first: &secrets[0], n: len(secrets)}
	if v, ok := redactors.m.Load(key); ok {
		if rd := v.(*redactor); slices.Equal(rd.secrets, secrets) {
			return rd
		}
	}
	rd := newRedactor(secrets)
	if redactors.n.Add(1) > maxRedactors {
		redactors.m.Clear()
		redactors.n.Store(1)
	}
	redactors.m.Store(key, rd)
	return rd
}

// SecretForms returns every form in which secret is redacted: the secret itself; its URL encodings
// (url.QueryEscape, url.PathEscape, space as %20, the encodings of JavaScript's encodeURIComponent and
// Python's quote), each with upper- and lowercase hex digits; the JSON string escapings of all of
// these (Go's HTML-safe \u003c \u003e \u0026, plain, "/" as "\/", non-ASCII as \uXXXX); its HTML
// escaping; and its base64 encodings (standard and URL alphabets, padded or not). A service that
// echoes its request URL, or a JSON encoder, cannot smuggle a secret past redaction this way.
func SecretForms(secret string) []string {
	if secret == "" {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(f string) {
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}

	texts := []string{secret}
	for _, enc := range []string{
		url.QueryEscape(secret),
		strings.ReplaceAll(url.QueryEscape(secret), "+", "%20"), // RFC 3986: space as %20
		url.PathEscape(secret),
		percentEncode(secret, "!'()*"), // JavaScript encodeURIComponent
		percentEncode(secret, "/"),     // Python urllib.parse.quote
	} {
		texts = append(texts, enc, lowerHex(enc))
	}
	for _, t := range texts {
		add(t)
	}
	for _, t := range texts {
		for _, j := range jsonForms(t) {
			add(j)
		}
	}
	h := html.EscapeString(secret)
	add(h)
	add(strings.NewReplacer("&#34;", "&quot;", "&#39;", "&#x27;").Replace(h))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		add(enc.EncodeToString([]byte(secret)))
	}
	return out
}

// percentEncode escapes every byte but the RFC 3986 unreserved characters and those of keep, space
// as %20, with uppercase hex digits.
func percentEncode(s, keep string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~", c) >= 0 || strings.IndexByte(keep, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// lowerHex lowercases the hex digits of the %XX escapes of s (%2F -> %2f).
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' && isHex(b[i+1]) && isHex(b[i+2]) {
			b[i+1], b[i+2] = lower(b[i+1]), lower(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' || c >= 'a' && c <= 'f'
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// jsonForms returns s as it appears inside a JSON string, quotes excluded, as common encoders write
// it: Go's (HTML-safe or not), with "/" escaped as "\/" (PHP), with every non-ASCII character as a
// \uXXXX escape (Python's default).
func jsonForms(s string) []string {
	htmlSafe, err := json.Marshal(s)
	if err != nil {
		return nil
	}
	var buf strings.Builder
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil
	}
	plain := strings.TrimSuffix(buf.String(), "\n")
	forms := []string{unquote(htmlSafe), unquote([]byte(plain))}
	for _, f := range forms[:2] {
		forms = append(forms, strings.ReplaceAll(f, "/", `\/`))
	}
	if ascii := asciiJSON(unquote([]byte(plain))); ascii != forms[1] {
		forms = append(forms, ascii, strings.ReplaceAll(ascii, "/", `\/`))
	}
	return forms
}

func unquote(b []byte) string {
	return strings.TrimSuffix(strings.TrimPrefix(string(b), `"`), `"`)
}

// asciiJSON escapes every non-ASCII character of an escaped JSON string body as \uXXXX (UTF-16, with
// surrogate pairs above U+FFFF).
func asciiJSON(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < utf8.RuneSelf:
			b.WriteRune(r)
		case r > 0xFFFF:
			r -= 0x10000
			fmt.Fprintf(&b, `\u%04x\u%04x`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

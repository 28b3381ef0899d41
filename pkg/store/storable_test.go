package store_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

func TestCheckJSON(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{`{}`, `{"a": [1, "x", null, true, 1e300, 1e-300, 12345678901234567890123]}`, `"é ✓"`, `1e5000`} {
		require.Nil(t, store.CheckJSON(json.RawMessage(ok)), ok)
	}
	for raw, path := range map[string]string{
		`{"a": "x\u0000y"}`:           "$.a",
		`{"a\u0000": 1}`:              "$",
		`{"a": [1, {"b": 1e999999}]}`: "$.a[1].b",
		`[1e-999999]`:                 "$[0]",
		`"\u0000"`:                    "$",
	} {
		u := store.CheckJSON(json.RawMessage(raw))
		require.NotNil(t, u, raw)
		require.Equal(t, path, u.Path, raw)
	}
	u := store.CheckJSON(json.RawMessage("{\"a\": \"\xff\xfe\"}"))
	require.NotNil(t, u)
	require.Contains(t, u.Reason, "UTF-8")
	deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	require.NotNil(t, store.CheckJSON(json.RawMessage(deep)), "nesting deeper than JSON decoders accept")
	require.Equal(t, "a\uFFFDb", store.CleanText("a\x00b"))
	require.Equal(t, "ab", store.CleanText("ab"))
}

func TestCheckJSONLargeButStorableNumbers(t *testing.T) {
	t.Parallel()
	// Shapes that pass the quick scan only through the full check, and still are storable.
	for _, ok := range []string{`{"n": 1e99999}`, `{"s": "e123456 in text"}`, `{"s": "\\u0000 escaped"}`} {
		require.Nil(t, store.CheckJSON(json.RawMessage(ok)), ok)
	}
	require.NotNil(t, store.CheckJSON(json.RawMessage(`{"n": 1`+strings.Repeat("0", 150000)+`}`)), "a run of digits")
}

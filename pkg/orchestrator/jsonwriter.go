package orchestrator

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"
)

// jsonWriter appends one JSON object's members to b, with what encoding/json would write for each
// value (but for its HTML escaping of <, > and & in strings, see string), without reflection and
// without compacting raw values again (json.Marshal scans a json.RawMessage twice: to check it and
// to compact it). A value it cannot write as encoding/json would (a string that is not UTF-8, a raw
// value that is not JSON) sets err.
type jsonWriter struct {
	b   []byte
	n   int // members written in the current object
	err error
}

var errNotJSON = errors.New("a value cannot be encoded to decode back as it is")

func (w *jsonWriter) open() { w.b, w.n = append(w.b, '{'), 0 }

// close ends an object. Objects nest only as members, so the enclosing object (if any) has at least
// that member: its next member needs a comma.
func (w *jsonWriter) close() { w.b, w.n = append(w.b, '}'), 1 }

// key starts member k (a name that needs no escaping).
func (w *jsonWriter) key(k string) {
	if w.n > 0 {
		w.b = append(w.b, ',')
	}
	w.n++
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
}

func (w *jsonWriter) str(k, v string) {
	w.key(k)
	w.string(v)
}

// strOpt writes a string member unless it is empty (omitempty).
func (w *jsonWriter) strOpt(k, v string) {
	if v != "" {
		w.str(k, v)
	}
}

func (w *jsonWriter) int(k string, v int64) {
	w.key(k)
	w.b = strconv.AppendInt(w.b, v, 10)
}

// intOpt writes an integer member unless it is 0 (omitempty).
func (w *jsonWriter) intOpt(k string, v int64) {
	if v != 0 {
		w.int(k, v)
	}
}

// time writes t as time.Time.MarshalJSON does (RFC 3339 with nanoseconds).
func (w *jsonWriter) time(k string, t time.Time) {
	if y := t.Year(); y < 0 || y > 9999 {
		w.err = errNotJSON // MarshalJSON refuses these too
		return
	}
	w.key(k)
	w.b = append(w.b, '"')
	w.b = t.AppendFormat(w.b, time.RFC3339Nano)
	w.b = append(w.b, '"')
}

// timeOpt writes *t unless t is nil (omitempty).
func (w *jsonWriter) timeOpt(k string, t *time.Time) {
	if t != nil {
		w.time(k, *t)
	}
}

// raw writes v as it is (null when empty, as json.Marshal writes a nil json.RawMessage).
func (w *jsonWriter) raw(k string, v json.RawMessage) {
	w.key(k)
	if len(v) == 0 {
		w.b = append(w.b, "null"...)
		return
	}
	if !json.Valid(v) {
		w.err = errNotJSON
		return
	}
	w.b = append(w.b, v...)
}

// rawOpt writes v unless it is empty (omitempty).
func (w *jsonWriter) rawOpt(k string, v json.RawMessage) {
	if len(v) > 0 {
		w.raw(k, v)
	}
}

// strs writes a list of strings (null when nil, as json.Marshal writes a nil slice).
func (w *jsonWriter) strs(k string, vs []string) {
	w.key(k)
	if vs == nil {
		w.b = append(w.b, "null"...)
		return
	}
	w.b = append(w.b, '[')
	for i, v := range vs {
		if i > 0 {
			w.b = append(w.b, ',')
		}
		w.string(v)
	}
	w.b = append(w.b, ']')
}

const hexDigits = "0123456789abcdef"

// string appends s quoted as JSON. encoding/json also escapes <, > and & for HTML and replaces
// invalid UTF-8; neither is needed to decode s back exactly, and a string that is not UTF-8 would
// not decode back exactly, so it sets err.
func (w *jsonWriter) string(s string) {
	b := append(w.b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				w.err = errNotJSON
				return
			}
			b = append(b, s[i:i+size]...)
			i += size
			continue
		}
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c >= 0x20:
			b = append(b, c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
	}
	w.b = append(b, '"')
}

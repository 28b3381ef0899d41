package orchestrator

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"time"
)

// The carried snapshot's encoding (carriedFormat 2): the job and its steps as binary fields, then
// base64 in a JSON string, so that the task's payload stays a JSON object. A worker reads it in
// one pass without reflection: as a JSON object (format 1, until session 16) it cost the worker
// two scans of it when it parsed the payload and two more when it decoded the snapshot, 8 % of its
// CPU in a chain run. The payload's parser only skips over a string, which it does quickly.
//
// A field is written as: an integer as a varint; a string or raw JSON as its length (a uvarint)
// and its bytes; a time as its Unix seconds and nanoseconds (varints); an optional field after a
// byte that is 1 when it is set, 0 when not; a list of strings as its length and each string.

// snapWriter appends a snapshot's fields to b.
type snapWriter struct{ b []byte }

func (w *snapWriter) int(v int64)   { w.b = binary.AppendVarint(w.b, v) }
func (w *snapWriter) uint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }

func (w *snapWriter) str(s string) {
	w.uint(uint64(len(s)))
	w.b = append(w.b, s...)
}

func (w *snapWriter) raw(v json.RawMessage) {
	w.uint(uint64(len(v)))
	w.b = append(w.b, v...)
}

func (w *snapWriter) rawOpt(v json.RawMessage) {
	if v == nil {
		w.b = append(w.b, 0)
		return
	}
	w.b = append(w.b, 1)
	w.raw(v)
}

func (w *snapWriter) strs(v []string) {
	w.uint(uint64(len(v)))
	for _, s := range v {
		w.str(s)
	}
}

func (w *snapWriter) time(t time.Time) {
	w.int(t.Unix())
	w.int(int64(t.Nanosecond()))
}

func (w *snapWriter) timeOpt(t *time.Time) {
	if t == nil {
		w.b = append(w.b, 0)
		return
	}
	w.b = append(w.b, 1)
	w.time(*t)
}

// lifetime writes the four times a job and a step share.
func (w *snapWriter) lifetime(created, updated time.Time, started, finished *time.Time) {
	w.time(created)
	w.time(updated)
	w.timeOpt(started)
	w.timeOpt(finished)
}

// quoted returns the fields written as a JSON string of their base64.
func (w *snapWriter) quoted() json.RawMessage {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(w.b))+2)
	out[0], out[len(out)-1] = '"', '"'
	base64.StdEncoding.Encode(out[1:len(out)-1], w.b)
	return out
}

// errSnapshot is a carried snapshot that is not one this release wrote.
var errSnapshot = errors.New("not a carried snapshot")

// snapReader reads the fields snapWriter wrote, in the same order. The first field that cannot be
// read sets err; the reads after it return zero values.
type snapReader struct {
	b   []byte
	err error
}

// unquote returns a reader of the fields in JSON string b (quoted's).
func unquote(b json.RawMessage) *snapReader {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return &snapReader{err: errSnapshot}
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)-2))
	n, err := base64.StdEncoding.Decode(out, b[1:len(b)-1])
	if err != nil {
		return &snapReader{err: errSnapshot}
	}
	return &snapReader{b: out[:n]}
}

func (r *snapReader) fail() {
	r.err, r.b = errSnapshot, nil
}

func (r *snapReader) int() int64   { return readVarint(r, binary.Varint) }
func (r *snapReader) uint() uint64 { return readVarint(r, binary.Uvarint) }

// readVarint reads a varint with read (binary.Varint or binary.Uvarint).
func readVarint[T int64 | uint64](r *snapReader, read func([]byte) (T, int)) T {
	v, n := read(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a length and checks that at least that many bytes follow.
func (r *snapReader) count() int {
	n := r.uint()
	if n > uint64(len(r.b)) {
		r.fail()
		return 0
	}
	return int(n) //nolint:gosec // n ≤ len(r.b), so it is an int
}

func (r *snapReader) bytes(n int) []byte {
	if n > len(r.b) {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *snapReader) str() string { return string(r.bytes(r.count())) }

func (r *snapReader) small() int {
	v := r.int()
	if v < math.MinInt32 || v > math.MaxInt32 {
		r.fail()
		return 0
	}
	return int(v)
}

// raw returns the bytes of the decoded buffer itself, which the snapshot then owns (unquote made
// the buffer for it).
func (r *snapReader) raw() json.RawMessage { return r.bytes(r.count()) }

func (r *snapReader) rawOpt() json.RawMessage {
	if !r.present() {
		return nil
	}
	return r.raw()
}

// present reads the byte before an optional field: whether the field follows.
func (r *snapReader) present() bool {
	flag := r.bytes(1)
	switch {
	case len(flag) == 0 || flag[0] == 0:
		return false
	case flag[0] != 1:
		r.fail()
		return false
	}
	return true
}

func (r *snapReader) strs() []string {
	n := r.count() // each string takes at least a byte
	out := make([]string, 0, n)
	for range n {
		out = append(out, r.str())
	}
	return out
}

func (r *snapReader) time() time.Time {
	s, ns := r.int(), r.int()
	if ns < 0 || ns >= int64(time.Second) {
		r.fail()
		return time.Time{}
	}
	return time.Unix(s, ns).UTC()
}

func (r *snapReader) timeOpt() *time.Time {
	if !r.present() {
		return nil
	}
	t := r.time()
	if r.err != nil {
		return nil
	}
	return &t
}

// lifetime reads the four times a job and a step share.
func (r *snapReader) lifetime() (created, updated time.Time, started, finished *time.Time) {
	created, updated = r.time(), r.time()
	return created, updated, r.timeOpt(), r.timeOpt()
}

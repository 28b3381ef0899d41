package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// A message of rings is encoded in binary: every worker decodes every message, and a ring carries
// its task's payload whole, which JSON would check and copy again at each end. The message is a
// format byte, then per ring its queue, id, type and payload, each as a length (uvarint) and its
// bytes, and its time (varint). A message of another format is dropped by the listener, as rings
// may be (they are hints): workers of another release then find those tasks at their next poll.
const ringFormat byte = 1

// encodeRings encodes rs as one message.
func encodeRings(rs []Ring) string {
	n := 1
	for _, g := range rs {
		n += 4*binary.MaxVarintLen32 + binary.MaxVarintLen64 + len(g.Queue) + len(g.ID) + len(g.Type) + len(g.Payload)
	}
	b := make([]byte, 1, n)
	b[0] = ringFormat
	for _, g := range rs {
		b = appendField(b, g.Queue)
		b = appendField(b, g.ID)
		b = appendField(b, g.Type)
		b = appendField(b, g.Payload)
		b = binary.AppendVarint(b, g.At)
	}
	return string(b)
}

func appendField[T string | []byte](b []byte, v T) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

var errRingMessage = errors.New("malformed ring message")

// decodeRings decodes a message of rings (encodeRings).
func decodeRings(msg string) ([]Ring, error) {
	if msg == "" || msg[0] != ringFormat {
		return nil, fmt.Errorf("%w: not of format %d", errRingMessage, ringFormat)
	}
	b := []byte(msg[1:]) // one copy; the payloads share it
	var rs []Ring
	for len(b) > 0 {
		var f [4][]byte // queue, id, type, payload
		for i := range f {
			var ok bool
			if f[i], b, ok = takeField(b); !ok {
				return nil, errRingMessage
			}
		}
		at, n := binary.Varint(b)
		if n <= 0 {
			return nil, errRingMessage
		}
		b = b[n:]
		g := Ring{Queue: string(f[0]), ID: string(f[1]), Type: string(f[2]), At: at}
		if p := f[3]; len(p) > 0 {
			g.Payload = p[:len(p):len(p)] // an append to it cannot reach the next ring's bytes
		}
		rs = append(rs, g)
	}
	return rs, nil
}

// takeField splits a length-prefixed field off b.
func takeField(b []byte) (v, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > math.MaxInt32 {
		return nil, nil, false
	}
	rest = b[k:]
	if l := int(n); l <= len(rest) {
		return rest[:l], rest[l:], true
	}
	return nil, nil, false
}

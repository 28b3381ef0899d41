package dispatch

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRingCodec: rings decode as they were encoded, payloads byte for byte (they need not be JSON),
// and a message that is cut short or of another format is refused whole.
func TestRingCodec(t *testing.T) {
	t.Parallel()
	rs := []Ring{
		{Queue: "default", ID: "step:j1:a:1:1", Type: "step", Payload: []byte(`{"job_id":"j1","snap":{"v":1}}`), At: 1_764_000_000_000_000},
		{Queue: "heavy", ID: "moved", At: -5}, // a parked task handed out: queue and id only
		{Queue: "q", ID: "é\x00\xff", Type: "t", Payload: []byte{0, 1, 2, 0xff}, At: 0},
	}
	msg := encodeRings(rs)
	got, err := decodeRings(msg)
	require.NoError(t, err)
	require.Equal(t, rs, got)

	got[0].Payload = append(got[0].Payload, "more"...)
	require.Equal(t, rs[1:], got[1:], "a payload's append does not reach the next ring")

	for cut := 1; cut < len(msg); cut++ {
		if cut == 1 || cut == len(encodeRings(rs[:1])) || cut == len(encodeRings(rs[:2])) {
			continue // a whole number of rings
		}
		_, err := decodeRings(msg[:cut])
		require.ErrorIs(t, err, errRingMessage, "cut at %d", cut)
	}
	for _, bad := range []string{"", "[]", `[{"q":"default","id":"x"}]`, string([]byte{ringFormat + 1})} {
		_, err := decodeRings(bad)
		require.ErrorIs(t, err, errRingMessage, "%q", bad)
	}
	none, err := decodeRings(encodeRings(nil))
	require.NoError(t, err)
	require.Empty(t, none)
}

// FuzzDecodeRings: no message makes the listener panic, and what decodes encodes back the same.
func FuzzDecodeRings(f *testing.F) {
	f.Add(encodeRings([]Ring{{Queue: "default", ID: "x", Type: "step", Payload: []byte(`{}`), At: 7}}))
	f.Add(string([]byte{ringFormat, 0x80}))
	f.Add("")
	f.Fuzz(func(t *testing.T, msg string) {
		rs, err := decodeRings(msg)
		if err != nil {
			return
		}
		again, err := decodeRings(encodeRings(rs))
		require.NoError(t, err)
		require.Equal(t, rs, again)
	})
}

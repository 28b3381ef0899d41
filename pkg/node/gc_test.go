package node

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestTuneGC(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })

	require.Equal(t, DefaultGCPercent, TuneGC(func(string) (string, bool) { return "", false }))
	require.Equal(t, DefaultGCPercent, debug.SetGCPercent(100), "no GOGC: the default is set")

	// GOGC set: the runtime read it at start; TuneGC leaves the target as it is.
	require.Equal(t, 100, TuneGC(func(k string) (string, bool) { return "100", k == "GOGC" }))
	require.Equal(t, 100, debug.SetGCPercent(100))
}

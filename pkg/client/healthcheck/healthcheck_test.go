package healthcheck

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLocalURL(t *testing.T) {
	for addr, want := range map[string]string{
		":8000":          "http://127.0.0.1:8000",
		"0.0.0.0:8000":   "http://127.0.0.1:8000",
		"[::]:9091":      "http://[::1]:9091",
		"127.0.0.1:8001": "http://127.0.0.1:8001",
		"api.local:80":   "http://api.local:80",
	} {
		got, err := LocalURL(addr)
		require.NoError(t, err, addr)
		require.Equal(t, want, got, addr)
	}
	for _, addr := range []string{"8000", ":0", "", "host:"} {
		_, err := LocalURL(addr)
		require.Error(t, err, addr)
	}
}

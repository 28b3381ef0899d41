//go:build unix

package testinfra

import (
	"net"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// RefusedAddr is a loopback address that refuses every connection for the whole test. It holds a bound
// socket that never listens, so no other test or process can take the port meanwhile: closing a
// listener and dialling its old port instead races with every other test that binds port 0.
func RefusedAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	require.NoError(t, err)
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	in, ok := sa.(*syscall.SockaddrInet4)
	require.True(t, ok, "socket name %T", sa)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(in.Port))
}

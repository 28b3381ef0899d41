package testinfra

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
)

// RoundTrips is a TCP proxy in front of Postgres that counts the round trips its clients make: each
// Sync message (the end of one extended-protocol exchange, however many statements it pipelines)
// and each simple-protocol Query is one. Tests use it to pin how many round trips an operation
// costs, so the hot path cannot creep back to many statements.
type RoundTrips struct {
	ln    net.Listener
	n     atomic.Int64
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// CountRoundTrips starts a counting proxy in front of the Postgres server of pgURL and returns it
// with pgURL rewritten to go through it. The proxy stops at the end of the test.
func CountRoundTrips(t testing.TB, pgURL string) (*RoundTrips, string) {
	t.Helper()
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatalf("count round trips: parse %q: %v", pgURL, err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("count round trips: listen: %v", err)
	}
	rt := &RoundTrips{ln: ln}
	rt.wg.Add(1)
	go rt.accept(target)
	t.Cleanup(rt.close)
	u.Host = ln.Addr().String()
	return rt, u.String()
}

// Count returns the round trips counted so far.
func (rt *RoundTrips) Count() int64 { return rt.n.Load() }

func (rt *RoundTrips) close() {
	_ = rt.ln.Close()
	rt.mu.Lock()
	for _, c := range rt.conns {
		_ = c.Close()
	}
	rt.mu.Unlock()
	rt.wg.Wait()
}

func (rt *RoundTrips) accept(target string) {
	defer rt.wg.Done()
	for {
		client, err := rt.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", target)
		if err != nil {
			_ = client.Close()
			continue
		}
		rt.mu.Lock()
		rt.conns = append(rt.conns, client, server)
		rt.mu.Unlock()
		rt.wg.Add(2)
		go func() {
			defer rt.wg.Done()
			_, _ = io.Copy(client, server)
			_ = client.Close()
		}()
		go func() {
			defer rt.wg.Done()
			_ = rt.countClient(client, server)
			_ = server.Close()
		}()
	}
}

// countClient forwards the client's messages to the server, counting Sync ('S') and Query ('Q').
// The first messages (SSL or GSS encryption requests, then the startup message) have no type byte.
func (rt *RoundTrips) countClient(client, server net.Conn) error {
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(client, hdr[:8]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint32(hdr[:4]))
		if n < 8 {
			return errors.New("bad startup message")
		}
		if _, err := server.Write(hdr[:8]); err != nil {
			return err
		}
		if _, err := io.CopyN(server, client, int64(n-8)); err != nil {
			return err
		}
		// 80877103 asks for SSL, 80877104 for GSS encryption: the startup message follows.
		if code := binary.BigEndian.Uint32(hdr[4:8]); code != 80877103 && code != 80877104 {
			break
		}
	}
	for {
		if _, err := io.ReadFull(client, hdr[:5]); err != nil {
			return err
		}
		if hdr[0] == 'S' || hdr[0] == 'Q' {
			rt.n.Add(1)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:5]))
		if n < 4 {
			return errors.New("bad message length")
		}
		if _, err := server.Write(hdr[:5]); err != nil {
			return err
		}
		if _, err := io.CopyN(server, client, int64(n-4)); err != nil {
			return err
		}
	}
}

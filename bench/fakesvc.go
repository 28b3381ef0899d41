package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// fakeService is an HTTP service in the bench process that CAO's http steps call: every call takes
// delay, and the service records when each call started and ended and how many were in flight at once.
type fakeService struct {
	delay time.Duration
	srv   *http.Server
	url   string

	mu       sync.Mutex
	inflight int
	peak     int
	calls    []span
}

// startFakeService listens on a free port of 127.0.0.1 and serves until stop.
func startFakeService(delay time.Duration) (*fakeService, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &fakeService{delay: delay, url: "http://" + ln.Addr().String()}
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

func (f *fakeService) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	f.mu.Lock()
	f.inflight++
	f.peak = max(f.peak, f.inflight)
	f.mu.Unlock()
	start := time.Now()

	t := time.NewTimer(f.delay)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}

	// Counted out before the answer is written, so before the caller can free its slot: a peak above
	// the limit is a real overlap, never an artefact of the order of these two events.
	end := time.Now()
	f.mu.Lock()
	f.inflight--
	f.calls = append(f.calls, span{start: start, end: end})
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"ok":true}`)
}

// results returns the calls answered so far and the peak of calls in flight.
func (f *fakeService) results() (calls []span, peak int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls), f.peak
}

// stop closes the listener and every connection.
func (f *fakeService) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		_ = f.srv.Close()
	}
}

// Package startstop runs a component's background loop behind Start and Stop methods that are safe
// to call twice and from several goroutines (River's rivershared/startstop does the same).
package startstop

import (
	"context"
	"sync"
)

// Loop is one background loop. The zero value is ready to use.
type Loop struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs fn in a new goroutine unless the loop already runs, and reports whether it started it.
// fn's context outlives ctx (the request that started the component) and ends when Stop is called.
func (l *Loop) Start(ctx context.Context, fn func(ctx context.Context)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		return false
	}
	// The loop outlives the start request; Stop ends it.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	l.cancel, l.done = cancel, done
	go func() {
		defer close(done)
		fn(lctx)
	}()
	return true
}

// Stop ends fn's context and waits until fn returned, or until ctx ends (its error is returned). It
// reports whether the loop was running; a Stop of a loop that does not run returns false, nil.
func (l *Loop) Stop(ctx context.Context) (bool, error) {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.cancel, l.done = nil, nil
	l.mu.Unlock()
	if cancel == nil {
		return false, nil
	}
	cancel()
	select {
	case <-done:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// Running reports whether the loop runs.
func (l *Loop) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cancel != nil
}

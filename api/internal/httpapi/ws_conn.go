package httpapi

// This file is one WebSocket connection: its writer (the start point, then the job's stream), pings
// and closing.

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/cao-run/cao/pkg/events"
)

// wsConn is one accepted connection: it writes in the goroutine of the HTTP handler.
type wsConn struct {
	h       *wsHub
	conn    *websocket.Conn
	f       *events.Follower // the job's stream, placed where the start point leaves the client
	jobID   string
	readCtx context.Context // done when the peer closed or the connection broke
	pinging atomic.Bool
}

// errClosed means the connection was closed while sending; the handler just returns.
var errClosed = errors.New("websocket closed")

func (w *wsConn) run(st startPoint) {
	defer w.conn.CloseNow()
	for _, b := range st.frames {
		if w.write(b) != nil {
			return
		}
	}
	terminal := st.terminal
	if st.more {
		term, err := w.f.Replay(w.h.ctx, w.send)
		if err != nil {
			w.failed(err)
			return
		}
		terminal = term
	}
	if terminal {
		w.close(websocket.StatusNormalClosure, "job finished")
		return
	}
	ping := time.NewTicker(w.h.cfg.pingInterval)
	defer ping.Stop()
	for {
		// A slow client is closed even if its queue still holds deliveries.
		if w.f.Slow() {
			w.closeSlow()
			return
		}
		select {
		case <-w.readCtx.Done():
			return
		case <-w.h.closing:
			w.close(websocket.StatusGoingAway, "server shutting down; reconnect with after_seq")
			return
		case <-w.f.SlowC():
			w.closeSlow()
			return
		case <-ping.C:
			w.ping()
		case d := <-w.f.C():
			done, err := w.f.Deliver(w.h.ctx, d, w.send)
			if err != nil {
				w.failed(err)
				return
			}
			if done {
				w.close(websocket.StatusNormalClosure, "job finished")
				return
			}
		}
	}
}

// send writes one frame of the job's stream.
func (w *wsConn) send(f events.Frame) error { return w.write(f.Data) }

// failed ends the connection after its stream failed: a write that failed has closed it already; a
// read of the event log that failed closes it with 1013, and the client comes back with after_seq.
func (w *wsConn) failed(err error) {
	if errors.Is(err, errClosed) {
		return
	}
	w.h.s.log.Warn("websocket: replay", "job_id", w.jobID, "err", err)
	w.close(websocket.StatusTryAgainLater, "event log unavailable; reconnect with after_seq")
}

func (w *wsConn) write(b []byte) error {
	ctx, cancel := context.WithTimeout(w.h.ctx, w.h.cfg.writeTimeout)
	defer cancel()
	if err := w.conn.Write(ctx, websocket.MessageText, b); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			// The peer did not take one message in writeTimeout; the library already dropped it.
			w.h.s.d.Metrics.WSSlowClosed.Inc()
		}
		return errClosed
	}
	return nil
}

func (w *wsConn) close(code websocket.StatusCode, reason string) {
	_ = w.conn.Close(code, reason)
}

func (w *wsConn) closeSlow() {
	w.h.s.d.Metrics.WSSlowClosed.Inc()
	w.close(websocket.StatusTryAgainLater, "too slow; reconnect with after_seq")
}

// ping checks liveness without blocking the writer: the pong is read by CloseRead's goroutine.
func (w *wsConn) ping() {
	if !w.pinging.CompareAndSwap(false, true) {
		return
	}
	w.h.wg.Add(1)
	go func() {
		defer w.h.wg.Done()
		defer w.pinging.Store(false)
		ctx, cancel := context.WithTimeout(w.h.ctx, w.h.cfg.pongTimeout)
		defer cancel()
		if err := w.conn.Ping(ctx); err != nil {
			_ = w.conn.CloseNow() // no pong: the peer is gone; the writer sees readCtx done
		}
	}()
}

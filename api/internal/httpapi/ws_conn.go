package httpapi

// This file is one WebSocket connection: its start (snapshot or replay), its live writer, pings and
// closing.

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
	cl      *wsClient
	jobID   string
	last    int64           // seq of the last message sent
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
		term, err := w.replay()
		if err != nil {
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
		if w.cl.slow.Load() {
			w.closeSlow()
			return
		}
		select {
		case <-w.readCtx.Done():
			return
		case <-w.h.closing:
			w.close(websocket.StatusGoingAway, "server shutting down; reconnect with after_seq")
			return
		case <-w.cl.slowCh:
			w.closeSlow()
			return
		case <-ping.C:
			w.ping()
		case d := <-w.cl.q:
			w.cl.take(d)
			done, err := w.deliver(d)
			if err != nil || done {
				return
			}
		}
	}
}

// deliver sends the messages the client does not have yet; done means the job ended and the
// connection was closed.
func (w *wsConn) deliver(d *delivery) (done bool, err error) {
	for _, m := range d.msgs {
		if m.seq <= w.last {
			continue
		}
		if m.seq > w.last+1 {
			// This client read the database before its topic knew where it stood: fill from the log.
			term, err := w.replay()
			if err != nil {
				return false, err
			}
			if term {
				w.close(websocket.StatusNormalClosure, "job finished")
				return true, nil
			}
			if m.seq != w.last+1 {
				continue
			}
		}
		if err := w.write(m.data); err != nil {
			return false, err
		}
		w.last = m.seq
		if m.terminal {
			w.close(websocket.StatusNormalClosure, "job finished")
			return true, nil
		}
	}
	return false, nil
}

// replay sends every event after w.last from the event log; terminal reports whether the last one
// ends the job (a terminal event followed by more, after a resume, does not).
func (w *wsConn) replay() (terminal bool, err error) {
	for {
		evs, err := w.h.s.d.Jobs.EventLog(w.h.ctx, w.jobID, w.last, w.h.cfg.pageSize)
		if err != nil {
			w.h.s.log.Warn("websocket: replay", "job_id", w.jobID, "err", err)
			w.close(websocket.StatusTryAgainLater, "event log unavailable; reconnect with after_seq")
			return false, err
		}
		for _, e := range evs {
			if e.Seq <= w.last {
				continue
			}
			m, err := encodeWire(events.FromEvent(e))
			if err != nil {
				return false, err
			}
			if err := w.write(m.data); err != nil {
				return false, err
			}
			w.last, terminal = m.seq, m.terminal
		}
		if len(evs) < w.h.cfg.pageSize {
			return terminal, nil
		}
	}
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

package events

// This file is one follower of a job's stream: its bounded queue on the job's topic and its
// position, from which it drops duplicates and fills gaps out of the log.

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
)

// Frame is one message, encoded once and shared by every follower of the job.
type Frame struct {
	Seq      int64
	Data     []byte // the JSON of the Message
	Terminal bool   // the message ends the job
}

func newFrame(m Message) (Frame, error) {
	b, err := json.Marshal(m)
	return Frame{Seq: m.Seq, Data: b, Terminal: m.Terminal()}, err
}

// Delivery is what a topic hands its followers at once: the messages of one publish (or of the
// publishes that arrived together), or one page read from the log. One delivery is shared by every
// follower of the job; a follower passes each one it receives to Deliver.
type Delivery struct{ frames []Frame }

// Follower is one watcher of a job's stream. The topic only ever offers to its queue (it never
// blocks); when more than StreamConfig.QueueLimit messages wait, the follower is marked slow and
// nothing more is queued for it. Its position and its methods belong to the one goroutine that reads
// it; Close may be called from anywhere.
type Follower struct {
	s       *Streams
	t       *topic
	q       chan *Delivery // capacity limit: a delivery holds at least one message
	pending atomic.Int64   // messages in q
	limit   int64
	slow    atomic.Bool
	slowC   chan struct{}
	last    int64 // the seq of the last event handed out
	close   sync.Once
}

func newFollower(s *Streams, limit int) *Follower {
	return &Follower{s: s, q: make(chan *Delivery, limit), limit: int64(limit), slowC: make(chan struct{})}
}

// C receives the topic's deliveries.
func (f *Follower) C() <-chan *Delivery { return f.q }

// SlowC is closed when the follower fell too far behind; its watcher should go and come back with
// its position (after_seq).
func (f *Follower) SlowC() <-chan struct{} { return f.slowC }

// Slow reports whether the follower fell too far behind (SlowC is closed).
func (f *Follower) Slow() bool { return f.slow.Load() }

// SetLast places the follower after seq: the last event its watcher has (the snapshot's last_seq, or
// after_seq).
func (f *Follower) SetLast(seq int64) { f.last = seq }

// Close leaves the job's topic; the last follower to leave ends it. Safe to call twice.
func (f *Follower) Close() {
	f.close.Do(func() { f.s.unregister(f.t, f) })
}

// Page returns the first page of the log after the follower's position (what a watcher that comes
// back with after_seq is sent first) and moves the position over it; more reports that the log may
// hold more (Replay sends the rest).
func (f *Follower) Page(ctx context.Context) (frames []Frame, more bool, err error) {
	evs, err := f.s.log.EventLog(ctx, f.t.jobID, f.last, f.s.cfg.PageSize)
	if err != nil {
		return nil, false, f.readErr(err)
	}
	for _, e := range evs {
		fr, err := newFrame(FromEvent(e))
		if err != nil {
			return nil, false, err
		}
		frames = append(frames, fr)
		f.last = fr.Seq
	}
	return frames, len(evs) == f.s.cfg.PageSize, nil
}

// Replay hands send, page by page, every event of the log after the follower's position; terminal
// reports whether the last one ends the job (a terminal event followed by more, after a resume, does
// not). An error of send is returned as it is.
func (f *Follower) Replay(ctx context.Context, send func(Frame) error) (terminal bool, err error) {
	for {
		evs, err := f.s.log.EventLog(ctx, f.t.jobID, f.last, f.s.cfg.PageSize)
		if err != nil {
			return false, f.readErr(err)
		}
		for _, e := range evs {
			if e.Seq <= f.last {
				continue
			}
			fr, err := newFrame(FromEvent(e))
			if err != nil {
				return false, err
			}
			if err := send(fr); err != nil {
				return false, err
			}
			f.last, terminal = fr.Seq, fr.Terminal
		}
		if len(evs) < f.s.cfg.PageSize {
			return terminal, nil
		}
	}
}

// Deliver hands send the frames of d that extend the follower's position, after filling a gap from
// the log (the follower read its starting point before its topic knew where it stood); done reports
// that an event ending the job was sent, and the rest of d is dropped. An error of send is returned
// as it is.
func (f *Follower) Deliver(ctx context.Context, d *Delivery, send func(Frame) error) (done bool, err error) {
	f.pending.Add(-int64(len(d.frames)))
	for _, fr := range d.frames {
		if fr.Seq <= f.last {
			continue
		}
		if fr.Seq > f.last+1 {
			terminal, err := f.Replay(ctx, send)
			if err != nil || terminal {
				return terminal, err
			}
			if fr.Seq != f.last+1 {
				continue
			}
		}
		if err := send(fr); err != nil {
			return false, err
		}
		f.last = fr.Seq
		if fr.Terminal {
			return true, nil
		}
	}
	return false, nil
}

func (f *Follower) readErr(err error) error {
	return fmt.Errorf("events: read the event log of job %s: %w", f.t.jobID, err)
}

// offer queues d unless the follower is slow; it never blocks.
func (f *Follower) offer(d *Delivery) {
	if f.slow.Load() {
		return
	}
	n := int64(len(d.frames))
	if p := f.pending.Add(n); p > f.limit && p != n {
		f.markSlow()
		return
	}
	select {
	case f.q <- d:
	default:
		f.markSlow()
	}
}

func (f *Follower) markSlow() {
	if f.slow.CompareAndSwap(false, true) {
		close(f.slowC)
	}
}

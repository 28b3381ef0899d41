package events

// This file is one watched job's topic in this process: its subscription, put in seq order and
// gap-filled from the log, handed to every follower of the job as shared deliveries.

import (
	"cmp"
	"slices"
	"sync"
)

// topic is one job's live stream in this process.
type topic struct {
	s     *Streams
	jobID string
	sub   *Subscription // taken when the topic is created, before anyone reads the database
	done  chan struct{} // closed when the last follower left or the streams stopped
	ended bool          // done is closed; guarded by s.mu
	refs  int           // guarded by s.mu

	// ready is closed once head0 (the job's last_seq read right after subscribing) is known, or
	// failed is set. Every follower reads its own starting point after ready, so no follower ever
	// starts before the topic: whatever the topic delivers extends what each follower has, without
	// a gap.
	ready  chan struct{}
	head0  int64
	failed error

	// polled receives the job's last_seq from the poll of every watched job.
	polled chan int64

	mu        sync.Mutex
	followers map[*Follower]struct{}
}

func newTopic(s *Streams, jobID string) *topic {
	return &topic{
		s: s, jobID: jobID, sub: s.sub.Subscribe(jobID, s.cfg.Buffer),
		done: make(chan struct{}), ready: make(chan struct{}), polled: make(chan int64, 1),
		followers: map[*Follower]struct{}{},
	}
}

// endLocked ends the topic's goroutine; s.mu is held.
func (t *topic) endLocked() {
	if !t.ended {
		t.ended = true
		close(t.done)
	}
}

// offerPolled hands the topic the job's last_seq from a poll, replacing an older value not yet taken.
func (t *topic) offerPolled(seq int64) {
	select {
	case <-t.polled:
	default:
	}
	select {
	case t.polled <- seq:
	default:
	}
}

// run orders the job's live messages and fills gaps from the log, until the topic ends.
func (t *topic) run() {
	defer t.s.wg.Done()
	sub := t.sub
	defer func() { sub.Close() }()
	head := t.head0
	subC := sub.C
	polled := head // last_seq seen by the previous poll
	batch := make([]Message, 0, 64)
	for {
		select {
		case <-t.done:
			return
		case m, ok := <-subC:
			if !ok {
				if !sub.Overflowed() {
					// The hub stopped (process shutting down): the poll still delivers from the log.
					subC = nil
					continue
				}
				// A burst overflowed the buffer: subscribe again first, then read what was missed.
				sub = t.s.sub.Subscribe(t.jobID, t.s.cfg.Buffer)
				subC = sub.C
				t.forward(t.readLog(&head))
				continue
			}
			batch = append(batch[:0], m)
		drain:
			for len(batch) < cap(batch) {
				select {
				case m, ok := <-subC:
					if !ok {
						break drain
					}
					batch = append(batch, m)
				default:
					break drain
				}
			}
			t.forward(t.order(batch, &head))
		case seq := <-t.polled:
			// Only events committed a whole interval ago and still missing count as lost; newer ones
			// are most likely still on their way through pub/sub.
			if polled > head {
				t.forward(t.readLog(&head))
			}
			polled = seq
		}
	}
}

// order returns the encoded messages that extend head without a gap, reading the log when a message
// is ahead of head (lost or reordered publish). Messages at or below head are duplicates.
func (t *topic) order(batch []Message, head *int64) []Frame {
	slices.SortStableFunc(batch, func(a, b Message) int { return cmp.Compare(a.Seq, b.Seq) })
	var out []Frame
	for _, m := range batch {
		if m.Seq <= *head {
			continue
		}
		if m.Seq > *head+1 {
			out = append(out, t.readLog(head)...)
			if m.Seq != *head+1 {
				// Not in the log yet, or already read: the next poll settles it.
				continue
			}
		}
		f, err := newFrame(m)
		if err != nil {
			continue
		}
		out = append(out, f)
		*head = m.Seq
	}
	return out
}

// readLog returns the encoded events after head from the log and advances head.
func (t *topic) readLog(head *int64) []Frame {
	var out []Frame
	for {
		evs, err := t.s.log.EventLog(t.s.ctx, t.jobID, *head, t.s.cfg.PageSize)
		if err != nil {
			t.s.cfg.Logger.Warn("stream: read event log", "job_id", t.jobID, "err", err)
			return out
		}
		for _, e := range evs {
			if e.Seq != *head+1 {
				return out
			}
			f, err := newFrame(FromEvent(e))
			if err != nil {
				return out
			}
			out = append(out, f)
			*head = e.Seq
		}
		if len(evs) < t.s.cfg.PageSize {
			return out
		}
	}
}

// forward offers the frames to every follower of the job as one delivery.
func (t *topic) forward(frames []Frame) {
	if len(frames) == 0 {
		return
	}
	d := &Delivery{frames: frames}
	t.mu.Lock()
	defer t.mu.Unlock()
	for f := range t.followers {
		f.offer(d)
	}
}

package events

// This file is the ordered, gap-filled stream of every job watched in this process (Streams): one
// topic per job, shared by the job's followers, and the poll that finds events whose publish was lost.

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cao-run/cao/pkg/startstop"
	"github.com/cao-run/cao/pkg/store"
)

// Subscriber is the live fan-out of job messages a Streams reads (Hub implements it).
type Subscriber interface {
	Subscribe(jobID string, buf int) *Subscription
}

// Log is the durable event log a Streams reads to put what pub/sub delivers in order and fill its
// gaps (the orchestrator implements it). Streams reads jobs it was asked to follow with
// store.AllTenants: whoever calls Follow has admitted the caller to the job already.
type Log interface {
	// Job returns the job in scope.
	Job(ctx context.Context, scope store.Scope, id string) (*store.Job, error)
	// EventLog returns up to limit events of the job after afterSeq, in seq order.
	EventLog(ctx context.Context, id string, afterSeq int64, limit int) ([]store.Event, error)
	// LastSeqs returns the last seq of each of the jobs that exist.
	LastSeqs(ctx context.Context, ids []string) (map[string]int64, error)
}

// StreamConfig tunes a Streams; a zero field takes the default written beside it.
type StreamConfig struct {
	// Buffer is the Hub buffer of one job's subscription in this process (default 256). A burst
	// larger than this is not lost: the topic subscribes again and reads the gap from the log.
	Buffer int
	// QueueLimit bounds the messages waiting for one follower (default 256); a follower that falls
	// this far behind is marked slow, so that it never slows the others. One delivery of any size is
	// accepted when nothing else waits (a page read from the log after a burst).
	QueueLimit int
	// PollInterval is how often the last_seq of every watched job is compared with what its topic
	// delivered, so that events whose publish was lost (a process died after commit, Redis was
	// reconnecting) still arrive (default 3s).
	PollInterval time.Duration
	// PageSize is how many events one read of the log returns (default 1000).
	PageSize int
	// NotFound is the error Log.Job returns for a job that does not exist (matched with errors.Is):
	// followers that waited for a topic whose first read failed with it fail at once, instead of
	// each reading the job again. Nil: every such follower reads again.
	NotFound error
	// Logger receives failed reads of the log (default slog.Default()).
	Logger *slog.Logger
}

func (c StreamConfig) withDefaults() StreamConfig {
	c.Buffer = cmp.Or(c.Buffer, 256)
	c.QueueLimit = cmp.Or(c.QueueLimit, 256)
	c.PollInterval = cmp.Or(c.PollInterval, 3*time.Second)
	c.PageSize = cmp.Or(c.PageSize, 1000)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// ErrStopping refuses new followers once Stop was called.
var ErrStopping = errors.New("events: streams stopping")

// Streams keeps, per process, one topic per watched job: a single Subscriber subscription whose
// messages are put in seq order, gap-filled from the log, encoded once and offered to each follower's
// bounded queue without ever blocking. Each follower owns its position (the seq of the last event it
// was given) and drops what it already has, which makes the switch from a snapshot or a replay to
// live events gap-free and duplicate-free.
type Streams struct {
	sub Subscriber
	log Log
	cfg StreamConfig

	ctx    context.Context // for reads of the log; cancelled when Stop is over
	cancel context.CancelFunc
	poll   startstop.Loop // the poll of every watched job's last_seq, started with the first topic
	wg     sync.WaitGroup // the topics' goroutines

	mu       sync.Mutex
	stopping bool
	topics   map[string]*topic
}

// NewStreams returns the streams of jobs read from sub and log.
func NewStreams(sub Subscriber, log Log, cfg StreamConfig) *Streams {
	ctx, cancel := context.WithCancel(context.Background())
	return &Streams{sub: sub, log: log, cfg: cfg.withDefaults(), ctx: ctx, cancel: cancel, topics: map[string]*topic{}}
}

// Follow adds a follower to the job's topic, creating the topic (and its subscription) if needed,
// and returns once the topic knows where the job stands. The caller reads its own starting point (a
// snapshot, or a page of the log) only after Follow and then places the follower there (SetLast):
// every event committed after that read then reaches the follower. A job that does not exist fails
// with Log.Job's error; after Stop, Follow fails with ErrStopping.
func (s *Streams) Follow(ctx context.Context, jobID string) (*Follower, error) {
	f := newFollower(s, s.cfg.QueueLimit)
	for {
		t, created, err := s.register(jobID, f)
		if err != nil {
			return nil, err
		}
		if created {
			// The topic is shared by every follower of the job, whatever its tenant: each follower's
			// caller reads its own starting point in its own scope before anything is sent.
			job, err := s.log.Job(ctx, store.AllTenants, jobID)
			if err != nil {
				s.mu.Lock()
				if s.topics[jobID] == t {
					delete(s.topics, jobID) // the next follower creates a fresh topic
				}
				s.mu.Unlock()
				t.failed = err
				close(t.ready)
				t.sub.Close() // run never starts for this topic
				s.wg.Done()
				s.unregister(t, f)
				return nil, err
			}
			t.head0 = job.LastSeq
			close(t.ready)
			go t.run()
			f.t = t
			return f, nil
		}
		select {
		case <-t.ready:
		case <-ctx.Done():
			s.unregister(t, f)
			return nil, ctx.Err()
		}
		if t.failed == nil {
			f.t = t
			return f, nil
		}
		s.unregister(t, f)
		if s.cfg.NotFound != nil && errors.Is(t.failed, s.cfg.NotFound) {
			return nil, t.failed
		}
		// The creator's read failed for its own reason (its request was cancelled, say): try anew.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// register adds f to the job's topic, creating the topic and its subscription if needed.
func (s *Streams) register(jobID string, f *Follower) (t *topic, created bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, false, ErrStopping
	}
	t = s.topics[jobID]
	if t == nil {
		t = newTopic(s, jobID)
		s.topics[jobID] = t
		created = true
		s.wg.Add(1) // under s.mu with stopping checked, so Stop's Wait never races this Add
		s.poll.Start(s.ctx, s.pollLoop)
	}
	t.refs++
	t.mu.Lock()
	t.followers[f] = struct{}{}
	t.mu.Unlock()
	return t, created, nil
}

// unregister removes f from t; the last follower to leave ends the topic.
func (s *Streams) unregister(t *topic, f *Follower) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t.mu.Lock()
	delete(t.followers, f)
	t.mu.Unlock()
	if t.refs--; t.refs == 0 {
		if s.topics[t.jobID] == t {
			delete(s.topics, t.jobID)
		}
		t.endLocked()
	}
}

// Stop refuses new followers, ends every topic and the poll, and waits for them or ctx. Followers
// still open receive nothing more. Safe to call twice.
func (s *Streams) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	for _, t := range s.topics {
		t.endLocked()
	}
	s.mu.Unlock()
	_, err := s.poll.Stop(ctx)
	if err == nil {
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	s.cancel() // unblocks reads of the log that outlived ctx
	return err
}

// pollLoop reads, every PollInterval, the last_seq of every job watched in this process in one query
// (per 1,000 jobs), and hands each topic its job's value: a topic reads the log only when events are
// missing, so followers cost the database one query per interval, not one per job.
func (s *Streams) pollLoop(ctx context.Context) {
	tick := time.NewTicker(s.cfg.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		topics := maps.Clone(s.topics)
		s.mu.Unlock()
		ids := slices.Collect(maps.Keys(topics))
		for chunk := range slices.Chunk(ids, 1000) {
			seqs, err := s.log.LastSeqs(ctx, chunk)
			if err != nil {
				continue // the next tick tries again
			}
			for id, seq := range seqs {
				if t := topics[id]; t != nil {
					t.offerPolled(seq)
				}
			}
		}
	}
}

package dispatch

import (
	"context"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cao-run/cao/pkg/pubsub"
	"github.com/cao-run/cao/pkg/startstop"
)

// Every worker hears every ring; each ring is answered by one of them, its owner: of the workers
// listening for the ring's queue, the one whose id hashes highest with the task's id (rendezvous
// hashing, so a worker that comes or goes moves only its own share of the rings). Without owners,
// every worker with a free handler tried to take every task (one Steal script each, all but one in
// vain): with four workers on two cores, about a tenth of the workers' CPU.
//
// Each worker lists itself, with an expiry, in a sorted set per queue it serves and reads the live
// members back, every ringRefresh. A worker that is not (yet) in its own view, because Redis could
// not be reached or it has just started, answers every ring as before. Views of the set may differ
// for up to a refresh while a worker comes or goes, or for ringListenerTTL after one died: a ring
// then has two owners (one Steal fails) or none (its task waits for an Asynq poll). Rings are hints
// either way. An owner with no free handler passes the ring on (Bell.PassOn), open to every worker,
// and keeps it for its own next free handler too: a busy owner does not hold back a task that an
// idle worker could start.

// How often a worker renews its place among a queue's listeners, and how long a place lasts.
const (
	ringRefresh     = time.Second
	ringListenerTTL = 3 * time.Second
)

// ringListenersKey is the sorted set of the workers listening for queue's rings: id -> expiry in
// Unix ms. It shares the bell channel's hash tag.
func ringListenersKey(rdb redis.UniversalClient, queue string) string {
	return pubsub.Channel(rdb, "", "bell:listeners:"+queue)
}

// RingOwners tells whether this worker owns a ring, from its view of each queue's listeners.
type RingOwners struct {
	rdb    redis.UniversalClient
	id     string
	queues []string
	log    *slog.Logger
	now    func() time.Time

	mu   sync.RWMutex
	live map[string][]string // queue -> live listener ids, as last read

	life startstop.Loop
}

// NewRingOwners returns the ring owners of worker id serving queues (nil logger: slog.Default()).
func NewRingOwners(rdb redis.UniversalClient, id string, queues []string, log *slog.Logger) *RingOwners {
	if log == nil {
		log = slog.Default()
	}
	return &RingOwners{rdb: rdb, id: id, queues: slices.Sorted(slices.Values(queues)), log: log, now: time.Now}
}

// Start lists the worker among its queues' listeners (once before it returns) and renews its place
// every ringRefresh until Stop. Safe to call twice.
func (o *RingOwners) Start(ctx context.Context) error {
	o.refresh(ctx)
	o.life.Start(ctx, func(ctx context.Context) {
		t := time.NewTicker(ringRefresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				o.refresh(ctx)
			}
		}
	})
	return nil
}

// Stop ends the renewals and takes the worker off its queues' listeners, so that the others answer
// its share of the rings at once. Safe to call twice.
func (o *RingOwners) Stop(ctx context.Context) error {
	if running, err := o.life.Stop(ctx); !running || err != nil {
		return err
	}
	o.mu.Lock()
	o.live = nil
	o.mu.Unlock()
	_, err := o.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, q := range o.queues {
			p.ZRem(ctx, ringListenersKey(o.rdb, q), o.id)
		}
		return nil
	})
	return err
}

// refresh renews the worker's place among each queue's listeners, drops the expired ones and reads
// the live ones. When Redis fails the view is forgotten: the worker answers every ring.
func (o *RingOwners) refresh(ctx context.Context) {
	now := o.now()
	reads := make(map[string]*redis.StringSliceCmd, len(o.queues))
	_, err := o.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, q := range o.queues {
			key := ringListenersKey(o.rdb, q)
			p.ZAdd(ctx, key, redis.Z{Score: float64(now.Add(ringListenerTTL).UnixMilli()), Member: o.id})
			p.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(now.UnixMilli(), 10))
			reads[q] = p.ZRange(ctx, key, 0, -1)
			p.PExpire(ctx, key, 2*ringListenerTTL) // a queue no worker serves any more leaves no key
		}
		return nil
	})
	live := make(map[string][]string, len(o.queues))
	if err == nil {
		for q, c := range reads {
			live[q] = c.Val()
		}
	} else if ctx.Err() == nil {
		o.log.Debug("renew this worker's place among the bell's listeners", "err", err)
	}
	o.mu.Lock()
	o.live = live
	o.mu.Unlock()
}

// Owns reports whether this worker answers ring g: it owns it among the live listeners of its
// queue, or it is not in its own view of them (or o is nil: the worker has no view).
func (o *RingOwners) Owns(g Ring) bool {
	if o == nil {
		return true
	}
	o.mu.RLock()
	ids := o.live[g.Queue]
	o.mu.RUnlock()
	if !slices.Contains(ids, o.id) {
		return true
	}
	return ringOwner(g.ID, ids) == o.id
}

// Shared reports whether another worker listens for queue's rings (by this worker's view): a ring
// this worker cannot answer at once is then worth passing on.
func (o *RingOwners) Shared(queue string) bool {
	if o == nil {
		return false
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	ids := o.live[queue]
	return len(ids) > 1 && slices.Contains(ids, o.id)
}

// ringOwner is the listener among ids that owns task id: the one whose id hashes highest with it
// (ties, which need equal 64-bit hashes, go to the greater id).
func ringOwner(task string, ids []string) string {
	var (
		best  string
		bestH uint64
	)
	for _, id := range ids {
		h := fnv.New64a()
		_, _ = h.Write([]byte(task))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(id))
		if s := mix64(h.Sum64()); best == "" || s > bestH || (s == bestH && id > best) {
			best, bestH = id, s
		}
	}
	return best
}

// mix64 spreads a hash's bits (MurmurHash3's finalizer): FNV's high bits barely differ between ids
// that differ in their last byte, and rendezvous hashing compares whole values.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

package limiter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// WaitRoom defaults.
const (
	// DefaultWaitPoll is WaitRoomConfig.Poll's default.
	DefaultWaitPoll = 250 * time.Millisecond
	// DefaultLobbyWait is WaitRoomConfig.LobbyWait's default.
	DefaultLobbyWait = 10 * time.Second
)

// WaitRoomConfig holds the optional settings of a WaitRoom.
type WaitRoomConfig struct {
	// ID names this process in waiter IDs; it must be unique across the fleet. Required.
	ID string
	// Poll is how often a waiter tries again without a wake-up: it bounds the delay after a wake-up
	// was missed (a lost pub/sub message, a crashed holder whose lease expired). It must stay well
	// below the semaphore's WaiterTTL, which it keeps refreshed. Default 250ms.
	Poll time.Duration
	// LobbyWait is how long a caller waits in this process for a place in the room when the room of
	// its semaphore is full, before Acquire gives up with ErrFull. Default 10s.
	LobbyWait time.Duration
}

// WaitRoom lets callers of one process wait for a semaphore slot instead of polling for it from
// outside: each waiter in the room keeps its place in the semaphore's fleet-wide FIFO queue, and
// whichever process releases a slot hands it to the waiter at the head of the queue: the release
// makes the waiter's lease and tells it through Redis pub/sub, so a freed slot is used as soon as
// the message arrives, with no round trip of the waiter's own. A waiter also retries every Poll,
// which covers lost messages (it finds its handed lease) and leases that expired.
//
// A waiter takes handed slots only when its limit cannot change while it waits (WaitOptions.Next is
// unset, or FixedLimit) and its TTL is at least handMinTTL times the semaphore's WaiterTTL. A handed
// lease counts, by this process's clock, from the send time of the waiter's last poll that found no
// slot: the release came after that poll ran, and within WaiterTTL of it, or the waiter would have
// lost its place. Any other waiter, and every waiter while the service is on hold (Adaptive.Hold),
// is woken by the release and takes the slot itself, one round trip later.
//
// The room of one semaphore has a bounded number of places per process; callers beyond it wait in
// the lobby, in this process only and in arrival order, for a place (at most LobbyWait).
type WaitRoom struct {
	sem *Semaphore
	rdb redis.UniversalClient
	cfg WaitRoomConfig
	seq atomic.Int64

	mu      sync.Mutex
	waiters map[string]*waiter       // waiter ID -> its wake-up
	count   map[string]int           // semaphore name -> local waiters (room and lobby)
	rooms   map[string]chan struct{} // semaphore name -> places in the room (a token per waiter)
	sub     *redis.PubSub
	done    chan struct{}
}

// NewWaitRoom returns a WaitRoom over sem; Start subscribes it to the wake-ups.
func NewWaitRoom(sem *Semaphore, cfg WaitRoomConfig) *WaitRoom {
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultWaitPoll
	}
	if cfg.LobbyWait <= 0 {
		cfg.LobbyWait = DefaultLobbyWait
	}
	return &WaitRoom{
		sem: sem, rdb: sem.rdb, cfg: cfg,
		waiters: map[string]*waiter{}, count: map[string]int{}, rooms: map[string]chan struct{}{},
	}
}

// Start subscribes to the semaphore's wake channel. Safe to call twice.
func (w *WaitRoom) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sub != nil {
		return nil
	}
	if w.cfg.ID == "" || strings.ContainsAny(w.cfg.ID, " \t\n") {
		return fmt.Errorf("limiter: wait room: ID %q is empty or holds white space", w.cfg.ID)
	}
	sub := w.rdb.Subscribe(ctx, w.sem.WakeChannel())
	if _, err := sub.Receive(ctx); err != nil {
		_ = sub.Close()
		return fmt.Errorf("limiter: wait room: subscribe: %w", err)
	}
	w.sub, w.done = sub, make(chan struct{})
	go w.listen(sub, w.done)
	return nil
}

// Stop ends the subscription; waiters fall back to polling. Safe to call twice.
func (w *WaitRoom) Stop(context.Context) error {
	w.mu.Lock()
	sub, done := w.sub, w.done
	w.sub = nil
	w.mu.Unlock()
	if sub == nil {
		return nil
	}
	err := sub.Close()
	<-done
	return err
}

func (w *WaitRoom) listen(sub *redis.PubSub, done chan struct{}) {
	defer close(done)
	// go-redis reconnects the subscription by itself; the channel closes when sub is closed.
	for m := range sub.Channel(redis.WithChannelSize(1024)) {
		name, wakes, ok := parseWake(m.Payload)
		if !ok {
			continue
		}
		for _, wk := range wakes {
			w.mu.Lock()
			wt := w.waiters[wk.waiter]
			if wt != nil && wk.handed {
				l := wk.lease
				l.Name = name
				wt.handed = &l
			}
			w.mu.Unlock()
			if wt != nil {
				select {
				case wt.wake <- struct{}{}:
				default:
				}
			}
		}
	}
}

// Waiting returns how many callers of this process wait for semaphore name, in the room or the lobby.
func (w *WaitRoom) Waiting(name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count[name]
}

// Acquire takes one of limit slots of semaphore name for ttl, waiting for a free slot while ctx
// allows. At most roomSize callers of this process (at least one) wait in the semaphore's queue at
// once; the others wait in the lobby for a place, and Acquire returns ErrFull when none frees within
// LobbyWait. A caller that stops waiting (ctx ended) gives up its place in the queue.
func (w *WaitRoom) Acquire(ctx context.Context, name string, limit int, ttl time.Duration, roomSize int) (Lease, error) {
	return w.AcquireWith(ctx, name, limit, ttl, roomSize, WaitOptions{})
}

// WaitOptions are the optional parts of a wait for a slot (AcquireWith).
type WaitOptions struct {
	// Next, when set, returns the limit before every try after the first: the limit may change while
	// the caller waits (an adaptive limit). An error from it ends the wait with that error.
	Next func(context.Context) (int, error)
	// FixedLimit says that Next never changes the limit, it only ends the wait (a service on hold):
	// the waiter may then take handed slots, which releases never hand while the service is on hold.
	FixedLimit bool
	// Enter, when set, is asked after the first try found no free slot, before the caller waits in
	// the room or the lobby: an error from it ends the wait with that error (a caller that must wait
	// elsewhere, such as behind other tenants' parked steps).
	Enter func(context.Context) error
	// NoLobby makes a caller that finds the room full return ErrFull at once, instead of waiting in
	// the lobby for a place.
	NoLobby bool
}

// AcquireWith is Acquire with options.
func (w *WaitRoom) AcquireWith(ctx context.Context, name string, limit int, ttl time.Duration, roomSize int, o WaitOptions) (Lease, error) {
	if limit <= 0 {
		return w.sem.Acquire(ctx, name, limit, ttl, "")
	}
	if ctx.Err() != nil {
		return Lease{}, context.Cause(ctx)
	}
	// Without a place in the queue, a slot is granted only when nobody waits for it.
	l, err := w.sem.Acquire(ctx, name, limit, ttl, "")
	if !errors.Is(err, ErrFull) {
		return l, err
	}
	if o.Enter != nil {
		if err := o.Enter(ctx); err != nil {
			return Lease{}, err
		}
	}
	room := w.arrive(name, max(roomSize, 1))
	defer w.depart(name)
	select {
	case room <- struct{}{}:
	default:
		if o.NoLobby {
			return Lease{}, ErrFull
		}
		lobby := time.NewTimer(w.cfg.LobbyWait)
		select {
		case room <- struct{}{}:
			lobby.Stop()
		case <-lobby.C:
			return Lease{}, ErrFull
		case <-ctx.Done():
			lobby.Stop()
			return Lease{}, context.Cause(ctx)
		}
	}
	defer func() { <-room }()
	wt := w.enter()
	defer w.leave(wt.id)
	hand := (o.Next == nil || o.FixedLimit) && ttl >= handMinTTL*w.sem.cfg.WaiterTTL
	var lastFull time.Time // the send time of the last poll that found no slot
	timer := time.NewTimer(w.cfg.Poll)
	defer timer.Stop()
	for {
		sent := w.sem.cfg.Now()
		l, handed, err := w.sem.acquire(ctx, name, limit, ttl, wt.id, hand)
		if handed {
			l.RequestedAt = lastFull
		}
		if !errors.Is(err, ErrFull) {
			if err != nil {
				w.giveUp(ctx, name, wt.id)
			}
			return l, err
		}
		lastFull = sent
		timer.Reset(w.cfg.Poll)
		select {
		case <-ctx.Done():
			w.giveUp(ctx, name, wt.id)
			return Lease{}, context.Cause(ctx)
		case <-wt.wake:
			if l, ok := w.takeHanded(wt, limit, lastFull); ok {
				return l, nil
			}
		case <-timer.C:
		}
		if o.Next != nil {
			n, err := o.Next(ctx)
			if err != nil {
				w.giveUp(ctx, name, wt.id)
				return Lease{}, err
			}
			limit = max(n, 1) // never 0, which would mean unlimited
		}
	}
}

// giveUp removes the waiter's place in the fleet-wide queue (best effort: it expires anyway).
func (w *WaitRoom) giveUp(ctx context.Context, name, wid string) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = w.sem.Leave(lctx, name, wid)
}

// arrive counts a waiter of semaphore name and returns the room's places (created with roomSize
// places by the first waiter; the room goes when its last waiter does).
func (w *WaitRoom) arrive(name string, roomSize int) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.count[name]++
	room := w.rooms[name]
	if room == nil {
		room = make(chan struct{}, roomSize)
		w.rooms[name] = room
	}
	return room
}

func (w *WaitRoom) depart(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.count[name]--; w.count[name] <= 0 {
		delete(w.count, name)
		delete(w.rooms, name)
	}
}

// handMinTTL is how many times the semaphore's WaiterTTL a waiter's lease TTL must be for it to take
// handed slots: such a lease counts from the waiter's last poll, which may be up to WaiterTTL older
// than the release that made it, so at least 3/4 of its TTL is left by this process's clock.
const handMinTTL = 4

// waiter is one caller in the room: its ID in the semaphore's queue, its wake-up, and the lease a
// release handed it (set by listen, taken by the waiter).
type waiter struct {
	id     string
	wake   chan struct{}
	handed *Lease
}

// enter registers a waiter for wake-ups.
func (w *WaitRoom) enter() *waiter {
	w.mu.Lock()
	defer w.mu.Unlock()
	wt := &waiter{id: w.cfg.ID + "#" + strconv.FormatInt(w.seq.Add(1), 10), wake: make(chan struct{}, 1)}
	w.waiters[wt.id] = wt
	return wt
}

// takeHanded returns the lease a release handed to wt, if one came, counting from requested (see
// WaitRoom). Its entry in the semaphore's handed keys stays until the lease is released.
func (w *WaitRoom) takeHanded(wt *waiter, limit int, requested time.Time) (Lease, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if wt.handed == nil {
		return Lease{}, false
	}
	l := *wt.handed
	wt.handed = nil
	l.RequestedAt, l.limit = requested, limit
	return l, true
}

func (w *WaitRoom) leave(wid string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.waiters, wid)
}

// wakeUp is one line of a wake-up message: a waiter to wake, or one handed a lease.
type wakeUp struct {
	waiter string
	handed bool
	lease  Lease // ID, Token and ExpiresAt of the handed lease
}

// parseWake reads the payload a release publishes (luaServe): the semaphore name, then a line per
// waiter served: its ID alone when it is woken to take its slot itself, or "ID lease-ID token
// expiry-ms" when the release handed it a lease. Malformed lines are skipped.
func parseWake(s string) (name string, wakes []wakeUp, ok bool) {
	name, rest, ok := strings.Cut(s, "\n")
	if !ok {
		return "", nil, false
	}
	for _, line := range strings.Split(rest, "\n") {
		f := strings.Fields(line)
		switch len(f) {
		case 1:
			wakes = append(wakes, wakeUp{waiter: f[0]})
		case 4:
			token, err1 := strconv.ParseInt(f[2], 10, 64)
			exp, err2 := strconv.ParseInt(f[3], 10, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			wakes = append(wakes, wakeUp{waiter: f[0], handed: true,
				lease: Lease{ID: f[1], Token: token, ExpiresAt: time.UnixMilli(exp)}})
		}
	}
	return name, wakes, true
}

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
// outside: each waiter in the room keeps its place in the semaphore's fleet-wide FIFO queue and is
// woken, through Redis pub/sub, by whichever process releases a slot, so a freed slot is taken within
// a round trip. A waiter also retries every Poll, which covers lost wake-ups and leases that expired.
// The room of one semaphore has a bounded number of places per process; callers beyond it wait in
// the lobby, in this process only and in arrival order, for a place (at most LobbyWait).
type WaitRoom struct {
	sem *Semaphore
	rdb redis.UniversalClient
	cfg WaitRoomConfig
	seq atomic.Int64

	mu      sync.Mutex
	waiters map[string]chan struct{} // waiter ID -> wake-up
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
		waiters: map[string]chan struct{}{}, count: map[string]int{}, rooms: map[string]chan struct{}{},
	}
}

// Start subscribes to the semaphore's wake channel. Safe to call twice.
func (w *WaitRoom) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sub != nil {
		return nil
	}
	if w.cfg.ID == "" {
		return errors.New("limiter: wait room: empty ID")
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
		_, wids, ok := parseWake(m.Payload)
		if !ok {
			continue
		}
		for _, wid := range wids {
			w.mu.Lock()
			ch := w.waiters[wid]
			w.mu.Unlock()
			if ch != nil {
				select {
				case ch <- struct{}{}:
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
	wid, wake := w.enter()
	defer w.leave(wid)
	timer := time.NewTimer(w.cfg.Poll)
	defer timer.Stop()
	for {
		l, err := w.sem.Acquire(ctx, name, limit, ttl, wid)
		if !errors.Is(err, ErrFull) {
			if err != nil {
				w.giveUp(ctx, name, wid)
			}
			return l, err
		}
		timer.Reset(w.cfg.Poll)
		select {
		case <-ctx.Done():
			w.giveUp(ctx, name, wid)
			return Lease{}, context.Cause(ctx)
		case <-wake:
		case <-timer.C:
		}
		if o.Next != nil {
			n, err := o.Next(ctx)
			if err != nil {
				w.giveUp(ctx, name, wid)
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

// enter registers a waiter for wake-ups and returns its ID.
func (w *WaitRoom) enter() (string, chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wid := w.cfg.ID + "#" + strconv.FormatInt(w.seq.Add(1), 10)
	ch := make(chan struct{}, 1)
	w.waiters[wid] = ch
	return wid, ch
}

func (w *WaitRoom) leave(wid string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.waiters, wid)
}

// parseWake reads the payload Release publishes (releaseScript): the semaphore name and the waiters
// to wake, a line each.
func parseWake(s string) (name string, waiterIDs []string, ok bool) {
	name, rest, ok := strings.Cut(s, "\n")
	if !ok {
		return "", nil, false
	}
	return name, strings.Split(rest, "\n"), true
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shape of the adaptive scenario (issue 15): a provider that refuses (429) any call that arrives
// while 3 are in flight, called by a service declared with max_concurrency 12 and adaptive {min: 1},
// compared with the same service declared with max_concurrency 3 by hand.
const (
	adaptiveCapacity    = 3   // calls the fake provider serves at once; more get 429 at once
	adaptiveMax         = 12  // max_concurrency of the adaptive run
	adaptiveJobs        = 600 // one-call jobs per run
	adaptiveWorkers     = 2
	adaptiveWindow      = 2 * time.Second // 429 share is measured per window of call starts
	adaptiveGoal429     = 0.05            // after convergence, fewer than 5% of calls get 429
	adaptiveGoalRatio   = 0.80            // throughput at least 0.80 × the hand-set run
	adaptiveSteadyShare = 0.95            // throughput counts successes until 95% of them are done
	adaptiveWaitTimeout = 4 * time.Minute
	adaptiveService     = "capped"
	adaptiveLimitKey    = "cao:aimd:{" + adaptiveService + "}" // limiter.Adaptive's key (default prefix)
)

// runAdaptive measures the adaptive limit against a hand-set one, in the same process and run.
func runAdaptive(ctx context.Context, e *env) []row {
	scenario := fmt.Sprintf("provider refuses (429) above %d calls in flight; %d jobs × %s call; %d workers × %d",
		adaptiveCapacity, adaptiveJobs, callDelay, adaptiveWorkers, limitedConcurrency)
	progress("CAO %s, max_concurrency %d by hand", scenario, adaptiveCapacity)
	base, err := adaptiveRun(ctx, e, adaptiveCapacity, false)
	if err != nil {
		progress("  error: %v", err)
		return []row{errorRow("15", scenario, err)}
	}
	bs := analyseAdaptive(base, nil)
	progress("  %s", bs)
	progress("CAO %s, max_concurrency %d with adaptive {min: 1}", scenario, adaptiveMax)
	run, err := adaptiveRun(ctx, e, adaptiveMax, true)
	if err != nil {
		progress("  error: %v", err)
		return []row{errorRow("15", scenario, err)}
	}
	as := analyseAdaptive(run, run.limits)
	progress("  %s", as)
	progress("  429 answers per %s window: %v", adaptiveWindow, as.timeline)

	tput := as.steadyRate / bs.steadyRate
	ok := as.after429 < adaptiveGoal429 && tput >= adaptiveGoalRatio
	goal := fmt.Sprintf("429 < %.0f%% after convergence, throughput ≥ %.2f × hand-set%s",
		100*adaptiveGoal429, adaptiveGoalRatio, verdict(ok))
	return []row{
		{
			target:   "15",
			scenario: scenario + fmt.Sprintf("; `max_concurrency: %d, adaptive: {min: 1}` vs `max_concurrency: %d` by hand", adaptiveMax, adaptiveCapacity),
			cao:      as.String(),
			floor:    "hand-set: " + bs.String(),
			ratio:    fmt.Sprintf("%.2f (throughput after convergence); whole run %s", tput, ratio(bs.wall.Seconds(), as.wall.Seconds())),
			goal:     goal,
		},
	}
}

// adaptiveResult is what one run recorded: the calls the provider saw and the effective limit over
// time (sampled from Redis, adaptive run only).
type adaptiveResult struct {
	calls  []statusSpan
	limits []limitSample
}

type statusSpan struct {
	span
	status int
}

type limitSample struct {
	at    time.Time
	limit int // 0: no state yet (the limit is max_concurrency)
}

// adaptiveRun posts the jobs to a fresh cluster whose service calls the overloadable provider, waits
// until all completed and returns what the provider saw.
func adaptiveRun(ctx context.Context, e *env, maxConcurrency int, adaptive bool) (adaptiveResult, error) {
	p, err := startOverloadService(callDelay, adaptiveCapacity)
	if err != nil {
		return adaptiveResult{}, err
	}
	defer p.stop()
	c, err := e.startCluster(ctx, clusterSpec{
		registry: adaptiveRegistryYAML(p.url, maxConcurrency, adaptive), workers: adaptiveWorkers, concurrency: limitedConcurrency,
	})
	if err != nil {
		return adaptiveResult{}, err
	}
	defer c.stop()
	var limits []limitSample
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		if adaptive {
			limits = sampleLimit(sctx, e.rdb)
		}
	}()
	cl := c.client()
	defer cl.close()
	_, err = postMany(ctx, cl, featureOne, adaptiveJobs, clients)
	if err == nil {
		_, err = c.waitCompleted(ctx, adaptiveJobs, adaptiveWaitTimeout)
	}
	stopSampling()
	<-sampled
	if err != nil {
		return adaptiveResult{}, err
	}
	return adaptiveResult{calls: p.results(), limits: limits}, nil
}

// sampleLimit reads the service's effective limit every 10 ms until ctx ends.
func sampleLimit(ctx context.Context, rdb *redis.Client) []limitSample {
	var out []limitSample
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		n, err := rdb.HGet(ctx, adaptiveLimitKey, "limit").Int()
		if err == nil || errors.Is(err, redis.Nil) {
			out = append(out, limitSample{at: time.Now(), limit: n})
		}
		select {
		case <-ctx.Done():
			return out
		case <-t.C:
		}
	}
}

// adaptiveRegistryYAML is the registry of one run: the http service `capped` at url and the feature
// `one` calling it once. A step refused with 429 is retried (up to 20 attempts) after a short backoff.
func adaptiveRegistryYAML(url string, maxConcurrency int, adaptive bool) string {
	var b strings.Builder
	b.WriteString("services:\n")
	fmt.Fprintf(&b, "  %s:\n    kind: http\n    base_url: %s\n    timeout: 10s\n", adaptiveService, url)
	fmt.Fprintf(&b, "    max_concurrency: %d\n    lease_ttl: 30s\n", maxConcurrency)
	if adaptive {
		b.WriteString("    adaptive: {min: 1}\n")
	}
	b.WriteString("    retry: {max_attempts: 20, initial_backoff: 100ms, max_backoff: 1s}\n")
	b.WriteString("features:\n")
	fmt.Fprintf(&b, "  %s:\n    steps:\n", featureOne)
	fmt.Fprintf(&b, "      - name: call\n        service: %s\n", adaptiveService)
	b.WriteString("        request: {method: POST, path: /call, body: {job: \"{{ .job.id }}\"}}\n")
	return b.String()
}

// adaptiveStats are the figures of one run.
type adaptiveStats struct {
	calls, refused int           // calls the provider saw, of which answered 429
	wall           time.Duration // first call's start to last call's end
	converged      time.Duration // first call's start to the start of convergence (0: from the start)
	before429      int           // 429 answers before convergence
	after429       float64       // share of calls answered 429 after convergence
	steadyRate     float64       // successful calls per second from convergence until 95% of them ended
	limitReached   time.Duration // adaptive: first call to the effective limit's first fall to the capacity; -1: never
	meanLimit      float64       // adaptive: time-weighted effective limit after convergence; 0: not sampled
	timeline       []int         // 429 answers per window of adaptiveWindow
}

func (s adaptiveStats) String() string {
	out := fmt.Sprintf("%d calls, %d answered 429 (%d before convergence); %.1f calls/s after; wall %s",
		s.calls, s.refused, s.before429, s.steadyRate, fmtDur(s.wall))
	if s.converged > 0 || s.before429 > 0 {
		out = fmt.Sprintf("converged in %s; after it %.1f%% of calls 429; ", fmtDur(s.converged), 100*s.after429) + out
	}
	if s.limitReached >= 0 && s.meanLimit > 0 {
		out += fmt.Sprintf("; effective limit first at %d after %s, mean %.2f after convergence", adaptiveCapacity, fmtDur(s.limitReached), s.meanLimit)
	}
	return out
}

// analyseAdaptive computes a run's figures. Convergence is the start of the first window of
// adaptiveWindow (counted from the first call) in which fewer than 5% of the calls were answered 429:
// the initial descent from max_concurrency is over. The figures "after convergence" count every call
// that started from then on (the limit keeps probing the level above the capacity, so a few 429s
// come later too).
func analyseAdaptive(r adaptiveResult, limits []limitSample) adaptiveStats {
	calls := slices.Clone(r.calls)
	slices.SortFunc(calls, func(a, b statusSpan) int { return a.start.Compare(b.start) })
	s := adaptiveStats{calls: len(calls), limitReached: -1}
	if len(calls) == 0 {
		return s
	}
	first := calls[0].start
	last := first
	for _, c := range calls {
		if c.end.After(last) {
			last = c.end
		}
		if c.status == http.StatusTooManyRequests {
			s.refused++
		}
	}
	s.wall = last.Sub(first)

	// 429 share per window; convergence after the last window at or above the goal.
	nw := int(s.wall/adaptiveWindow) + 1
	total, refused := make([]int, nw), make([]int, nw)
	for _, c := range calls {
		w := int(c.start.Sub(first) / adaptiveWindow)
		total[w]++
		if c.status == http.StatusTooManyRequests {
			refused[w]++
		}
	}
	conv := nw
	for w := range nw {
		if total[w] > 0 && float64(refused[w])/float64(total[w]) < adaptiveGoal429 {
			conv = w
			break
		}
	}
	s.timeline = refused
	convAt := first.Add(time.Duration(conv) * adaptiveWindow)
	s.converged = convAt.Sub(first)
	var after, afterRefused int
	var ends []time.Time
	for _, c := range calls {
		if c.start.Before(convAt) {
			if c.status == http.StatusTooManyRequests {
				s.before429++
			}
			continue
		}
		after++
		if c.status == http.StatusTooManyRequests {
			afterRefused++
		} else {
			ends = append(ends, c.end)
		}
	}
	if after > 0 {
		s.after429 = float64(afterRefused) / float64(after)
	}
	if len(ends) > 0 {
		slices.SortFunc(ends, time.Time.Compare)
		n := max(1, int(float64(len(ends))*adaptiveSteadyShare))
		if d := ends[n-1].Sub(convAt); d > 0 {
			s.steadyRate = float64(n) / d.Seconds()
		}
	}

	// The effective limit as sampled: when it first came down to the capacity, and its time-weighted
	// mean after convergence.
	var weighted, span float64
	for i, l := range limits {
		lim := l.limit
		if lim == 0 {
			lim = adaptiveMax
		}
		if s.limitReached < 0 && lim <= adaptiveCapacity && !l.at.Before(first) {
			s.limitReached = l.at.Sub(first)
		}
		if i+1 < len(limits) && !l.at.Before(convAt) && l.at.Before(last) {
			d := limits[i+1].at.Sub(l.at).Seconds()
			weighted += float64(lim) * d
			span += d
		}
	}
	if span > 0 {
		s.meanLimit = weighted / span
	}
	return s
}

// overloadService is an HTTP service in the bench process that answers 429 at once to any call that
// arrives while capacity calls are in flight, and serves the others in delay. It records every call
// with its answer.
type overloadService struct {
	delay    time.Duration
	capacity int
	srv      *http.Server
	url      string

	mu       sync.Mutex
	inflight int
	calls    []statusSpan
}

func startOverloadService(delay time.Duration, capacity int) (*overloadService, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &overloadService{delay: delay, capacity: capacity, url: "http://" + ln.Addr().String()}
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

func (f *overloadService) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	start := time.Now()
	f.mu.Lock()
	f.inflight++
	over := f.inflight > f.capacity
	f.mu.Unlock()
	status := http.StatusOK
	if over {
		status = http.StatusTooManyRequests
	} else {
		t := time.NewTimer(f.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	// Counted out before the answer is written, so before the caller can free its slot.
	f.mu.Lock()
	f.inflight--
	f.calls = append(f.calls, statusSpan{span: span{start: start, end: time.Now()}, status: status})
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if over {
		_, _ = io.WriteString(w, `{"error":"too many requests in flight"}`)
		return
	}
	_, _ = io.WriteString(w, `{"ok":true}`)
}

func (f *overloadService) results() []statusSpan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *overloadService) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		_ = f.srv.Close()
	}
}

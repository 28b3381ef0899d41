package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/stretchr/testify/require"
)

// This file holds the fault-injection tools of the chaos suite: a counting HTTP service that CAO
// calls, a TCP proxy that takes Postgres "down" and "up", a private redis-server that can be killed
// and restarted, and helpers to find and kill the worker running a given call.

// csCall is one call the counting service received.
type csCall struct {
	Seq       int
	Key       string // the Idempotency-Key header
	Job, Step string // from the request body (rendered by CAO's templates)
	Run       int
	Attempt   int
	Arrived   time.Time
	Ended     time.Time // zero while in flight
	Applied   bool      // this call applied the key's effect
	Replayed  bool      // the key's effect was already applied: answered from the stored result
	Cancelled bool      // the client went away before the answer
	Status    int
}

// csTrapMode says what a trap does to the call it catches.
type csTrapMode int

const (
	// csHoldBeforeEffect blocks the call before its effect is applied until released or the client leaves.
	csHoldBeforeEffect csTrapMode = iota
	// csHoldAfterEffect applies the effect, then blocks before answering until released.
	csHoldAfterEffect
	// csNotifyArrival reports the call when it arrives and lets it run.
	csNotifyArrival
	// csNotifyAnswered reports the call after its answer was written.
	csNotifyAnswered
)

// csTrap catches the first call matching match.
type csTrap struct {
	match   func(c *csCall) bool
	mode    csTrapMode
	hit     chan *csCall  // receives the caught call
	release chan struct{} // closed by the test to let a held call go on
	once    sync.Once
	fired   bool
}

// Release lets the held call go on (safe to call twice).
func (tr *csTrap) Release() { tr.once.Do(func() { close(tr.release) }) }

// wait returns the caught call, failing the test after d.
func (tr *csTrap) wait(t *testing.T, d time.Duration) *csCall {
	t.Helper()
	select {
	case c := <-tr.hit:
		return c
	case <-time.After(d):
		t.Fatalf("no call caught by the trap within %s", d)
		return nil
	}
}

// countingService is an HTTP service for CAO's `kind: http` steps that records every call with its
// Idempotency-Key, applies each key's effect once (a repeat is a duplicate call, not a duplicate
// effect), and measures the calls in flight at once.
type countingService struct {
	t       *testing.T
	srv     *httptest.Server
	latency time.Duration
	closing chan struct{}

	mu       sync.Mutex
	calls    []*csCall
	applied  map[string]*csCall // key -> call that applied its effect
	inflight int
	peak     int
	traps    []*csTrap
	fail     map[string]*csFailRule // by step
}

// csFailRule makes calls of a step answer an error status instead of applying the effect.
type csFailRule struct {
	status int
	times  int // how many more calls fail; < 0: all
}

// newCountingService starts the service on 127.0.0.1; every call takes latency unless a trap holds it.
func newCountingService(t *testing.T, latency time.Duration) *countingService {
	t.Helper()
	s := &countingService{t: t, latency: latency, closing: make(chan struct{}), applied: map[string]*csCall{}, fail: map[string]*csFailRule{}}
	s.srv = httptest.NewServer(s)
	// Cleanups run last-in first-out: held calls are let go before the server waits for its handlers.
	t.Cleanup(s.srv.Close)
	t.Cleanup(func() { close(s.closing) })
	return s
}

// URL is the service's base URL.
func (s *countingService) URL() string { return s.srv.URL }

// trap arms a trap on the first future call matching match.
func (s *countingService) trap(mode csTrapMode, match func(c *csCall) bool) *csTrap {
	tr := &csTrap{match: match, mode: mode, hit: make(chan *csCall, 1), release: make(chan struct{})}
	s.mu.Lock()
	s.traps = append(s.traps, tr)
	s.mu.Unlock()
	s.t.Cleanup(tr.Release)
	return tr
}

// setFail makes the next times calls of step (all of them when times < 0) answer status; status 0
// makes them succeed again.
func (s *countingService) setFail(step string, status, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 || times == 0 {
		delete(s.fail, step)
		return
	}
	s.fail[step] = &csFailRule{status: status, times: times}
}

func (s *countingService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Job     string `json:"job"`
		Step    string `json:"step"`
		Run     int    `json:"run"`
		Attempt int    `json:"attempt"`
	}
	raw, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(raw, &body)
	c := &csCall{Key: r.Header.Get("Idempotency-Key"), Job: body.Job, Step: body.Step, Run: body.Run,
		Attempt: body.Attempt, Arrived: time.Now()}

	s.mu.Lock()
	s.inflight++
	s.peak = max(s.peak, s.inflight)
	c.Seq = len(s.calls) + 1
	s.calls = append(s.calls, c)
	var tr *csTrap
	for _, x := range s.traps {
		if !x.fired && x.match(c) {
			x.fired, tr = true, x
			break
		}
	}
	failStatus := 0
	if f := s.fail[c.Step]; f != nil {
		failStatus = f.status
		if f.times--; f.times == 0 {
			delete(s.fail, c.Step)
		}
	}
	s.mu.Unlock()
	status := http.StatusOK
	defer func() {
		s.mu.Lock()
		s.inflight--
		c.Ended, c.Status = time.Now(), status
		s.mu.Unlock()
	}()
	cancelled := func() {
		s.mu.Lock()
		c.Cancelled = true
		s.mu.Unlock()
		status = 499
	}

	switch {
	case tr != nil && tr.mode == csHoldBeforeEffect:
		tr.hit <- s.snapshot(c)
		if !s.hold(r, tr) {
			cancelled()
			return
		}
	case tr != nil && tr.mode == csNotifyArrival:
		tr.hit <- s.snapshot(c)
		fallthrough
	default:
		timer := time.NewTimer(s.latency)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			cancelled()
			return
		case <-s.closing:
			timer.Stop()
			cancelled()
			return
		}
	}
	if failStatus != 0 {
		status = failStatus
		http.Error(w, `{"error": "simulated failure"}`, failStatus)
		return
	}
	s.mu.Lock()
	first := s.applied[c.Key]
	if first == nil {
		s.applied[c.Key], c.Applied, first = c, true, c
	} else {
		c.Replayed = true
	}
	s.mu.Unlock()
	if tr != nil && tr.mode == csHoldAfterEffect {
		tr.hit <- s.snapshot(c)
		s.hold(r, tr) // the effect is applied: answer even if nobody listens any more
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"key": c.Key, "attempt": c.Attempt, "call": c.Seq, "replayed": c.Replayed, "applied_by_attempt": first.Attempt,
	})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	if tr != nil && tr.mode == csNotifyAnswered {
		tr.hit <- s.snapshot(c)
	}
}

// hold blocks a trapped call until the test releases it; false means the client went away first.
func (s *countingService) hold(r *http.Request, tr *csTrap) bool {
	select {
	case <-tr.release:
		return r.Context().Err() == nil
	case <-r.Context().Done():
		return false
	case <-s.closing:
		return false
	}
}

func (s *countingService) snapshot(c *csCall) *csCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := *c
	return &cp
}

// Calls returns a copy of every call so far.
func (s *countingService) Calls() []csCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]csCall, len(s.calls))
	for i, c := range s.calls {
		out[i] = *c
	}
	return out
}

// Peak is the largest number of calls that were in flight at once.
func (s *countingService) Peak() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// Answered counts calls answered with an applied or replayed effect.
func (s *countingService) Answered() int {
	n := 0
	for _, c := range s.Calls() {
		if c.Applied || c.Replayed {
			n++
		}
	}
	return n
}

// waitCall waits for a call matching match (already received or future) and returns it.
func (s *countingService) waitCall(t *testing.T, d time.Duration, what string, match func(c csCall) bool) csCall {
	t.Helper()
	var found csCall
	testinfra.Eventually(t, d, func() bool {
		for _, c := range s.Calls() {
			if match(c) {
				found = c
				return true
			}
		}
		return false
	}, "%s", what)
	return found
}

// pollUntil polls cond every 20ms until it holds (true) or d passes (false).
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// chaosRegistry is the registry of the chaos and recovery tests: one limited HTTP service (the
// counting service) and features whose request bodies carry job, step, run and attempt.
func chaosRegistry(baseURL string, maxConc int, leaseTTL string) string {
	body := `{method: POST, path: "/call/{{ .step.name }}", body: {job: "{{ .job.id }}", step: "{{ .step.name }}", run: "{{ .step.run }}", attempt: "{{ .step.attempt }}"}}`
	return fmt.Sprintf(`
services:
  svc:
    kind: http
    base_url: %s
    timeout: 30s
    max_concurrency: %d
    lease_ttl: %s
    retry: {max_attempts: 3, initial_backoff: 200ms, max_backoff: 1s}
features:
  fanout:
    steps:
      - {name: a, service: svc, request: %[4]s}
      - {name: b, service: svc, queue: medium, needs: [a], request: %[4]s}
      - {name: c, service: svc, queue: heavy, needs: [a], request: %[4]s}
  chain:
    steps:
      - {name: a, service: svc, request: %[4]s}
      - {name: b, service: svc, needs: [a], request: %[4]s}
      - {name: c, service: svc, needs: [b], request: %[4]s}
  parked:
    steps:
      - {name: a, service: svc, request: %[4]s}
      - {name: b, service: svc, queue: parked, request: %[4]s}
      - {name: c, service: svc, needs: [a, b], request: %[4]s}
`, baseURL, maxConc, leaseTTL, body)
}

// workerByID returns the running worker process whose worker id (worker-<host>-<pid>) is id.
func (c *cluster) workerByID(id string) *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if p.name == "worker" && strings.HasSuffix(id, "-"+strconv.Itoa(p.cmd.Process.Pid)) {
			return p
		}
	}
	return nil
}

// alive reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// attemptWorkerID returns the worker id recorded for attempt (run, attempt) of the job's step.
func attemptWorkerID(t *testing.T, cl *client, jobID, step string, run, attempt int) string {
	t.Helper()
	var id string
	testinfra.Eventually(t, 10*time.Second, func() bool {
		for _, h := range steps(cl.job(jobID))[step]["attempt_history"].([]any) {
			m := h.(map[string]any)
			if int(m["run"].(float64)) == run && int(m["attempt"].(float64)) == attempt {
				id = m["worker_id"].(string)
				return true
			}
		}
		return false
	}, "%s", fmt.Sprintf("attempt %d of %s/%s/%d in the history", attempt, jobID, step, run))
	return id
}

// pgProxy is a TCP proxy in front of Postgres; down closes every proxied connection and refuses
// new ones (the port is closed), up accepts again on the same port.
type pgProxy struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
}

// newPGProxy starts a proxy to the Postgres of pgURL and returns it with pgURL rewritten through it.
func newPGProxy(t *testing.T, pgURL string) (*pgProxy, string) {
	t.Helper()
	u, err := url.Parse(pgURL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &pgProxy{t: t, addr: ln.Addr().String(), target: u.Host, conns: map[net.Conn]struct{}{}}
	p.ln = ln
	go p.accept(ln)
	t.Cleanup(p.down)
	u.Host = p.addr
	return p, u.String()
}

func (p *pgProxy) accept(ln net.Listener) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln { // went down meanwhile
			p.mu.Unlock()
			_, _ = in.Close(), out.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_, _ = dst.Close(), src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(in, out)
		go pipe(out, in)
	}
}

// down closes the port and every proxied connection: to CAO, Postgres is gone.
func (p *pgProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
}

// up listens on the same port again.
func (p *pgProxy) up() {
	p.t.Helper()
	var ln net.Listener
	testinfra.Eventually(p.t, 10*time.Second, func() bool {
		var err error
		ln, err = net.Listen("tcp", p.addr)
		return err == nil
	}, "%s", "the proxy port to be free again")
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.accept(ln)
}

// privateRedis is a redis-server of this test only, without persistence, that can be killed -9 and
// started again on the same port (with no data).
type privateRedis struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startPrivateRedis starts a redis-server on a free port.
func startPrivateRedis(t *testing.T) *privateRedis {
	t.Helper()
	_, port, err := net.SplitHostPort(freeAddr(t))
	require.NoError(t, err)
	r := &privateRedis{t: t, dir: t.TempDir()}
	r.port, _ = strconv.Atoi(port)
	r.start()
	t.Cleanup(func() {
		if r.cmd != nil && r.running() {
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// URL is the redis:// URL of logical database 0.
func (r *privateRedis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

func (r *privateRedis) running() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// start runs redis-server and waits until it answers PING.
func (r *privateRedis) start() {
	r.t.Helper()
	path, err := exec.LookPath("redis-server")
	require.NoError(r.t, err, "redis-server must be installed for the Redis-loss scenario (apt-get install redis-server)")
	r.log = fmt.Sprintf("%s/redis-%d.log", r.dir, time.Now().UnixNano())
	f, err := os.Create(r.log)
	require.NoError(r.t, err)
	r.cmd = exec.Command(path, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", r.dir, "--daemonize", "no")
	r.cmd.Stdout, r.cmd.Stderr = f, f
	require.NoError(r.t, r.cmd.Start())
	r.done = make(chan struct{})
	cmd, done := r.cmd, r.done
	go func() { _ = cmd.Wait(); _ = f.Close(); close(done) }()
	testinfra.Eventually(r.t, 10*time.Second, func() bool {
		if !r.running() {
			b, _ := os.ReadFile(r.log)
			r.t.Fatalf("redis-server exited:\n%s", b)
		}
		return r.ping() == nil
	}, "%s", "the private redis-server to answer PING")
}

// kill stops redis-server with SIGKILL: everything it held is gone.
func (r *privateRedis) kill() {
	r.t.Helper()
	require.NoError(r.t, r.cmd.Process.Signal(syscall.SIGKILL))
	<-r.done
}

func (r *privateRedis) ping() error {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return errors.New("unexpected reply " + line)
	}
	return nil
}

package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/events"
	"github.com/cao-run/cao/pkg/node"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
)

// The fan-out benchmark runs the API in a child process (this test binary again, see TestMain) so
// that its memory per connection is measured alone and each side has its own open-files limit; the
// benchmark process holds the clients and publishes the events.
const (
	benchChildEnv = "CAO_WS_BENCH_CHILD"
	benchPGEnv    = "CAO_WS_BENCH_PG"
	benchRedisEnv = "CAO_WS_BENCH_REDIS"
	benchMemPath  = "/__bench/mem"
)

// benchMem is the child's memory after a GC.
type benchMem struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	RSS        uint64 `json:"rss"`
	Goroutines int    `json:"goroutines"`
}

// runBenchChild serves the API for the benchmark until its stdin closes.
func runBenchChild() int {
	if err := benchChild(); err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 1
	}
	return 0
}

func benchChild() error {
	raiseNoFile()
	ctx := context.Background()
	reg, err := registry.Parse("test-registry.yaml", []byte(testRegistry), nil)
	if err != nil {
		return err
	}
	cfg, err := config.Parse(func(string) (string, bool) { return "", false })
	if err != nil {
		return err
	}
	cfg.AuthOff = true
	st, err := sqlstore.OpenPostgres(ctx, os.Getenv(benchPGEnv), sqlstore.Config{})
	if err != nil {
		return err
	}
	ropt, err := redis.ParseURL(os.Getenv(benchRedisEnv))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropt)
	n := node.Build(cfg, testLogger(), "bench-api", reg, st, rdb)
	n.OnClose(rdb.Close)
	n.OnClose(st.Close)
	if err := n.Start(ctx); err != nil {
		return err
	}
	if err := n.StartHub(ctx); err != nil {
		return err
	}
	api := New(nodeDeps(n), Options{})
	mux := http.NewServeMux()
	mux.Handle("/", api.Handler())
	mux.HandleFunc(benchMemPath, func(w http.ResponseWriter, _ *http.Request) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if path := os.Getenv("CAO_BENCH_HEAPPROFILE"); path != "" {
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				_ = f.Close()
			}
		}
		_ = json.NewEncoder(w).Encode(benchMem{
			HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, RSS: rss(), Goroutines: runtime.NumGoroutine(),
		})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	if path := os.Getenv("CAO_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	fmt.Printf("ADDR http://%s\n", ln.Addr())
	signal.Ignore(syscall.SIGINT)
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = api.Stop(sctx)
	_ = srv.Shutdown(sctx)
	return n.Stop(sctx)
}

// rss is the process's resident set size from /proc (0 where unavailable).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// raiseNoFile lifts the soft open-files limit to the hard limit.
func raiseNoFile() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// benchChildProc is the running API process.
type benchChildProc struct {
	URL   string
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startBenchChild(b *testing.B, env *testEnv) *benchChildProc {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"=1", benchPGEnv+"="+env.PGURL, benchRedisEnv+"="+env.RedisURL)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(b, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(b, err)
	require.NoError(b, cmd.Start())
	p := &benchChildProc{cmd: cmd, stdin: stdin}
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			p.URL = u
			break
		}
	}
	require.NotEmpty(b, p.URL, "the API child process did not start")
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return p
}

func (p *benchChildProc) mem(b *testing.B) benchMem {
	b.Helper()
	res, err := http.Get(p.URL + benchMemPath)
	require.NoError(b, err)
	defer res.Body.Close()
	var m benchMem
	require.NoError(b, json.NewDecoder(res.Body).Decode(&m))
	return m
}

// BenchmarkFanout measures one API process fanning one job's events out to many WebSocket clients.
// Each iteration publishes one event on Redis (as the orchestrator does after commit) and waits until
// every client has it. Reported: deliveries/s (clients x events per second), p50/p99 latency from
// PUBLISH to the client's read, and the API process's memory per connection (Go heap+stack, and RSS).
// CAO_BENCH_CLIENTS overrides the client counts (default 1,1000,10000; 1 is the baseline).
func BenchmarkFanout(b *testing.B) {
	counts := []int{1, 1000, 10000}
	if s := os.Getenv("CAO_BENCH_CLIENTS"); s != "" {
		counts = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			require.NoError(b, err, "CAO_BENCH_CLIENTS")
			counts = append(counts, n)
		}
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, clients int) {
	raiseNoFile()
	var lim syscall.Rlimit
	require.NoError(b, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	require.Greater(b, lim.Cur, uint64(clients+200), "open files limit too low for %d clients; raise ulimit -n", clients)

	env := newTestEnv(b)
	child := startBenchChild(b, env)
	api := &testAPI{URL: child.URL}
	jobID := api.createJob(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ropt, err := redis.ParseURL(env.RedisURL)
	require.NoError(b, err)
	rdb := redis.NewClient(ropt)
	defer rdb.Close()
	pub := events.NewRedisPublisher(rdb, nil)

	// Publish times by seq offset, and the signal that every client has the current event.
	const maxEvents = 1 << 20
	pubAt := make([]atomic.Int64, maxEvents)
	var remaining atomic.Int64
	roundDone := make(chan struct{}, 1)
	lat := make([][]time.Duration, clients)
	var base int64

	before := child.mem(b)
	conns := make([]*websocket.Conn, clients)
	var dialWG sync.WaitGroup
	sem := make(chan struct{}, 32)
	errs := make(chan error, clients)
	for i := range conns {
		dialWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer dialWG.Done()
			defer func() { <-sem }()
			c, _, err := websocket.Dial(ctx, api.WSURL(jobID, ""), nil)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	dialWG.Wait()
	close(errs)
	for err := range errs {
		require.NoError(b, err)
	}
	var readers sync.WaitGroup
	for i, c := range conns {
		snap, err := readMsg(ctx, c)
		require.NoError(b, err)
		base = snap.Seq
		readers.Add(1)
		go func() {
			defer readers.Done()
			var m struct {
				Seq int64 `json:"seq"`
			}
			for {
				_, data, err := c.Read(ctx)
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				if json.Unmarshal(data, &m) != nil || m.Seq <= base {
					continue
				}
				lat[i] = append(lat[i], time.Duration(now-pubAt[m.Seq-base].Load()))
				if remaining.Add(-1) == 0 {
					roundDone <- struct{}{}
				}
			}
		}()
	}

	seq := base
	round := func() {
		seq++
		remaining.Store(int64(clients))
		ev := store.Event{JobID: jobID, Seq: seq, Type: store.EventStep, Step: "fetch", Status: "RUNNING",
			Attempt: int(seq), Run: 1, At: time.Now().UTC()}
		pubAt[seq-base].Store(time.Now().UnixNano())
		pub.Post([]store.Event{ev})
		require.NoError(b, pub.Flush(ctx))
		select {
		case <-roundDone:
		case <-time.After(30 * time.Second):
			b.Fatalf("event %d: %d of %d clients still waiting after 30s", seq, remaining.Load(), clients)
		}
	}
	// Warm up (buffers, goroutine stacks), then measure memory with everyone connected.
	const warmup = 3
	for range warmup {
		round()
	}
	after := child.mem(b)

	start := time.Now()
	rounds := 0
	for b.Loop() {
		round()
		rounds++
		require.Less(b, rounds, maxEvents-10)
	}
	elapsed := time.Since(start)

	all := make([]time.Duration, 0, rounds*clients)
	for _, l := range lat {
		all = append(all, l[warmup:]...) // the reader goroutines own lat until here: no reset races
	}
	require.Len(b, all, rounds*clients)
	slices.Sort(all)
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse)/float64(clients), "heap+stack-B/conn")
	b.ReportMetric(float64(int64(after.RSS)-int64(before.RSS))/float64(clients), "rss-B/conn")
	b.ReportMetric(float64(after.Goroutines-before.Goroutines)/float64(clients), "goroutines/conn")

	for _, c := range conns {
		_ = c.CloseNow()
	}
	readers.Wait()
}

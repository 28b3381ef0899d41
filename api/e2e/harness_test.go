package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	caoclient "github.com/cao-run/cao/pkg/client"
	"github.com/cao-run/cao/pkg/testinfra"
)

// bin holds the binaries built once for the whole package.
var bin struct {
	api, worker string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cao-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin.api = filepath.Join(dir, "cao-api")
	bin.worker = filepath.Join(dir, "cao-worker")
	for _, b := range []struct{ out, pkgDir string }{{bin.api, ".."}, {bin.worker, "../../worker"}} {
		cmd := exec.Command("go", "build", "-o", b.out, ".")
		cmd.Dir = b.pkgDir
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", b.out, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a set of real cao-api and cao-worker processes over one Postgres schema and one Redis DB.
type cluster struct {
	t        *testing.T
	dir      string
	env      []string
	PG       string
	Redis    *testinfra.RedisDB
	mu       sync.Mutex
	procs    []*proc
	registry string
}

// proc is one running process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	Addr string // API: host:port
	done chan struct{}
	err  error
}

// newCluster prepares the backends and writes the registry; processes start with startAPI/startWorker.
func newCluster(t *testing.T, registryYAML string, env ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), PG: testinfra.PostgresSchema(t), Redis: testinfra.Redis(t)}
	c.registry = filepath.Join(c.dir, "registry.yaml")
	require.NoError(t, os.WriteFile(c.registry, []byte(registryYAML), 0o600))
	c.env = append(os.Environ(),
		"CAO_DATABASE_URL="+c.PG, "CAO_REDIS_URL="+c.Redis.URL, "CAO_REGISTRY="+c.registry,
		"CAO_AUTH=off", "CAO_LOG_FORMAT=text", "CAO_LOG_LEVEL=info", "CAO_AUTO_MIGRATE=true",
		// Many clusters run at once against one Postgres (max_connections 100): small pools.
		"CAO_DATABASE_MAX_CONNS=4")
	c.env = append(c.env, env...)
	t.Cleanup(c.stopAll)
	return c
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func (c *cluster) start(name, path string, env ...string) *proc {
	c.t.Helper()
	p := &proc{name: name, log: filepath.Join(c.dir, fmt.Sprintf("%s-%d.log", name, len(c.procs))), done: make(chan struct{})}
	f, err := os.Create(p.log)
	require.NoError(c.t, err)
	p.cmd = exec.Command(path)
	p.cmd.Env = append(append([]string{}, c.env...), env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	require.NoError(c.t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// startAPI starts a cao-api process on a port it picks itself (so parallel tests never race for a
// port), reads the address from its log and waits until /health answers.
func (c *cluster) startAPI(env ...string) *proc {
	c.t.Helper()
	p := c.start("api", bin.api, append([]string{"CAO_HTTP_ADDR=127.0.0.1:0"}, env...)...)
	p.Addr = c.logValue(p, `msg="api listening" addr=(\S+)`, 30*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.Addr + "/health")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			c.t.Fatalf("cao-api exited before it was ready: %v\n%s", p.err, c.tail(p))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cao-api not ready within 30s\n%s", c.tail(p))
		}
	}
}

// logValue waits until the process's log matches pattern and returns its first group.
func (c *cluster) logValue(p *proc, pattern string, d time.Duration) string {
	c.t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(p.log)
		if m := re.FindSubmatch(b); m != nil {
			return string(m[1])
		}
		select {
		case <-p.done:
			c.t.Fatalf("%s exited: %v\n%s", p.name, p.err, c.tail(p))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not log %q within %s\n%s", p.name, pattern, d, c.tail(p))
		}
	}
}

// startWorker starts a cao-worker process and waits until it logs that it started.
func (c *cluster) startWorker(env ...string) *proc {
	c.t.Helper()
	p := c.start("worker", bin.worker, env...)
	c.waitLog(p, "worker started", 30*time.Second)
	return p
}

// waitLog waits until the process's log contains s.
func (c *cluster) waitLog(p *proc, s string, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(p.log)
		if bytes.Contains(b, []byte(s)) {
			return
		}
		select {
		case <-p.done:
			c.t.Fatalf("%s exited: %v\n%s", p.name, p.err, c.tail(p))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not log %q within %s\n%s", p.name, s, d, c.tail(p))
		}
	}
}

func (c *cluster) tail(p *proc) string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return fmt.Sprintf("--- %s log (%s) ---\n%s", p.name, p.log, b)
}

// signal sends sig to the process; for SIGKILL it also waits for the exit, for SIGSTOP until every
// thread of the process is stopped. kill(2) returns once the signal is queued: a stop takes effect
// only when the thread the kernel handed it to gets a CPU and stops the others, and on a loaded
// machine the other threads go on running meanwhile (they have received an answer and committed
// its outcome more than 100 ms after kill returned).
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
	switch sig { //nolint:exhaustive // only these two signals are waited for; the others return at once
	case syscall.SIGKILL:
		<-p.done
	case syscall.SIGSTOP:
		testinfra.Eventually(t, 10*time.Second, func() bool { return p.stopped(t) }, "%s",
			fmt.Sprintf("every thread of %s (pid %d) to stop", p.name, p.cmd.Process.Pid))
	}
}

// stopped reports whether every thread of the process is stopped (state T in /proc/PID/task/*/stat).
func (p *proc) stopped(t *testing.T) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err, "the threads of %s (Linux /proc)", p.name)
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread exited
		}
		// "TID (comm) S ...": the state follows the last ')' (comm may hold one).
		i := bytes.LastIndexByte(raw, ')')
		if i < 0 || i+2 >= len(raw) || raw[i+2] != 'T' {
			return false
		}
	}
	return len(ents) > 0
}

// wait waits for the process to exit.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("%s did not exit within %s", p.name, d)
		return nil
	}
}

func (c *cluster) stopAll() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if c.t.Failed() {
		for _, p := range procs {
			c.t.Log(c.tail(p))
		}
	}
}

// client talks to one API process: through pkg/client (the Go client CAO ships) wherever a test
// reads or starts jobs as a user would, and with do for the raw status and body checks of the
// contract's edges.
type client struct {
	t    *testing.T
	base string
	once sync.Once
	api  *caoclient.Client
}

// sdk returns the Go client for this API process.
func (cl *client) sdk() *caoclient.Client {
	cl.once.Do(func() {
		c, err := caoclient.New(cl.base)
		require.NoError(cl.t, err)
		cl.api = c
	})
	return cl.api
}

// asMap turns a client value into the contract's JSON object, for tests that check its fields.
func asMap(t *testing.T, v any) map[string]any {
	t.Helper()
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	return m
}

func (c *cluster) client(p *proc) *client { return &client{t: c.t, base: "http://" + p.Addr} }

// do sends a request and decodes the JSON answer into a map.
func (cl *client) do(method, path string, body any, hdr ...string) (int, map[string]any) {
	cl.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		require.NoError(cl.t, err)
		r = bytes.NewReader(js)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, cl.base+path, r)
	require.NoError(cl.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(cl.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(cl.t, err)
	var out map[string]any
	if len(raw) > 0 && raw[0] == '{' {
		require.NoError(cl.t, json.Unmarshal(raw, &out), string(raw))
	}
	return resp.StatusCode, out
}

// createJob starts a job with the Go client and returns its id.
func (cl *client) createJob(feature string, input any) string {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acc, err := cl.sdk().Start(ctx, caoclient.StartRequest{Feature: feature, Input: input})
	require.NoError(cl.t, err)
	require.Equal(cl.t, caoclient.JobPending, acc.Status)
	return acc.JobID
}

// job fetches a job object with the Go client.
func (cl *client) job(id string) map[string]any {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	j, err := cl.sdk().Get(ctx, id)
	require.NoError(cl.t, err)
	return asMap(cl.t, j)
}

// waitJob polls until the job has one of the statuses, failing after d.
func (cl *client) waitJob(id string, d time.Duration, statuses ...string) map[string]any {
	cl.t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		j := cl.job(id)
		for _, s := range statuses {
			if j["status"] == s {
				return j
			}
		}
		if time.Now().After(deadline) {
			js, _ := json.MarshalIndent(j, "", "  ")
			cl.t.Fatalf("job %s not %v within %s:\n%s", id, statuses, d, js)
		}
		<-tick.C
	}
}

// steps returns a job's steps by name.
func steps(j map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, s := range j["steps"].([]any) {
		m := s.(map[string]any)
		out[m["name"].(string)] = m
	}
	return out
}

func parseTime(t *testing.T, v any) time.Time {
	t.Helper()
	s, ok := v.(string)
	require.True(t, ok, "time field %v", v)
	tm, err := time.Parse(time.RFC3339Nano, s)
	require.NoError(t, err)
	return tm
}

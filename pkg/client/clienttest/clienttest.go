// Package clienttest runs a real `cao-api dev` process (API, in-process workers, embedded Redis and
// SQLite: no Postgres or Redis needed) for the tests of code that talks to CAO through package
// client. It builds cao-api from the repository's api module with the go command, once per test
// binary, so it works inside the CAO repository (it finds go.work above the working directory).
//
//	func TestMain(m *testing.M) { clienttest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		dev := clienttest.Start(t, clienttest.Options{})
//		c, _ := client.New(dev.URL)
//		...
//	}
package clienttest

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/testinfra"
)

// Registry is the default registry of Start: mock services only.
//
//   - greet: input {"name": string, required}; two quick steps, hello then shout.
//   - slow: six steps in a chain, 150 ms each (about a second in all): time to watch, cancel,
//     drop connections.
//   - broken: ok, then fails (whose service fails every attempt; 2 attempts), then after (never
//     runs): the job ends FAILED.
const Registry = `services:
  fast: {kind: mock, latency: 5ms}
  slow: {kind: mock, latency: 150ms}
  broken:
    kind: mock
    latency: 5ms
    fail_times: 1000
    retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}
features:
  greet:
    description: Two quick steps.
    input:
      type: object
      required: [name]
      properties: {name: {type: string, minLength: 1}}
    steps:
      - {name: hello, service: fast, output: {greeting: "hello {{ .input.name }}"}}
      - {name: shout, service: fast, needs: [hello], output: {loud: "{{ .steps.hello.output.greeting }}!"}}
  slow:
    description: Six slow steps in a chain.
    steps:
      - {name: s1, service: slow}
      - {name: s2, service: slow, needs: [s1]}
      - {name: s3, service: slow, needs: [s2]}
      - {name: s4, service: slow, needs: [s3]}
      - {name: s5, service: slow, needs: [s4]}
      - {name: s6, service: slow, needs: [s5], output: {done: true}}
  broken:
    description: Fails in its second step.
    steps:
      - {name: ok, service: fast}
      - {name: fails, service: broken, needs: [ok]}
      - {name: after, service: fast, needs: [fails]}
`

// Options configure Start.
type Options struct {
	// Registry is the registry YAML (default: Registry).
	Registry string
	// Env holds extra KEY=VALUE variables for the process, e.g. "CAO_API_KEYS=secret". The test
	// process's own CAO_* variables are not passed on.
	Env []string
}

// Dev is a running `cao-api dev` process.
type Dev struct {
	URL     string // http://127.0.0.1:PORT
	Addr    string // 127.0.0.1:PORT
	DataDir string
	LogFile string // the process's stdout and stderr

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// Main runs the tests of m and removes the cao-api binary built for them; call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// Binary returns the path of cao-api built from this repository's api module (built on first use).
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := repoRoot()
		if err != nil {
			build.err = err
			return
		}
		build.dir, build.err = os.MkdirTemp("", "cao-clienttest-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "cao-api")
		cmd := exec.Command("go", "build", "-o", build.bin, ".") //nolint:gosec // the go tool, building this repository
		cmd.Dir = filepath.Join(root, "api")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			build.err = fmt.Errorf("go build cao-api in %s: %w\n%s", cmd.Dir, err, out.String())
		}
	})
	if build.err != nil {
		t.Fatalf("clienttest: %v", build.err)
	}
	return build.bin
}

// repoRoot is the nearest directory above the working directory that holds go.work.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory: clienttest runs inside the CAO repository")
		}
		dir = parent
	}
}

// listening finds the address in dev mode's banner ("  API          http://127.0.0.1:PORT/api/v1").
var listening = regexp.MustCompile(`API +http://(\S+)/api/v1`)

// Start runs `cao-api dev` on a free loopback port with its database in a temporary directory,
// waits until /health answers, and stops it (SIGINT, then SIGKILL after 15 s) when the test ends.
func Start(t testing.TB, opts Options) *Dev {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	reg := opts.Registry
	if reg == "" {
		reg = Registry
	}
	regPath := filepath.Join(dir, "registry.yaml")
	if err := os.WriteFile(regPath, []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &Dev{DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "cao-api.log"), done: make(chan struct{})}
	logf, err := os.Create(d.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(bin, "dev", "--addr", "127.0.0.1:0", "--data-dir", d.DataDir, "--registry", regPath) //nolint:gosec // the binary Binary built
	d.cmd.Dir = dir
	d.cmd.Env = append(environ(), "CAO_LOG_FORMAT=text", "CAO_LOG_LEVEL=info")
	d.cmd.Env = append(d.cmd.Env, opts.Env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		_ = logf.Close()
		t.Fatalf("clienttest: start cao-api dev: %v", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		_ = logf.Close()
		close(d.done)
	}()
	t.Cleanup(d.stop)

	testinfra.Eventually(t, 60*time.Second, func() bool {
		d.failIfExited(t)
		b, _ := os.ReadFile(d.LogFile)
		if m := listening.FindSubmatch(b); m != nil {
			d.Addr = string(m[1])
			return true
		}
		return false
	}, "cao-api dev did not print its address:\n%s", logTail{d})
	d.URL = "http://" + d.Addr
	testinfra.Eventually(t, 30*time.Second, func() bool {
		d.failIfExited(t)
		resp, err := http.Get(d.URL + "/health")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "cao-api dev at %s did not answer /health:\n%s", d.URL, logTail{d})
	return d
}

// environ is the test process's environment without CAO_* variables.
func environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CAO_") {
			env = append(env, kv)
		}
	}
	return env
}

func (d *Dev) failIfExited(t testing.TB) {
	t.Helper()
	select {
	case <-d.done:
		t.Fatalf("clienttest: cao-api dev exited: %v\n%s", d.err, d.Log())
	default:
	}
}

// logTail formats as the end of the process's output when the message is built.
type logTail struct{ d *Dev }

func (l logTail) String() string { return l.d.Log() }

// Log returns the end of the process's output.
func (d *Dev) Log() string {
	b, _ := os.ReadFile(d.LogFile)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

func (d *Dev) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

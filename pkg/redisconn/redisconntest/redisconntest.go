// Package redisconntest starts real Redis deployments for tests: a three-master Redis Cluster and a
// master watched by a Sentinel, each on free local ports, from the redis-server of the system, and
// kills them when the test ends. A test that cannot find redis-server fails with how to install it.
package redisconntest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const installHelp = "install it with: apt-get install -y redis-server"

// startTimeout bounds each wait: a server answering, the cluster agreeing, the sentinel finding its
// master.
const startTimeout = 30 * time.Second

// Cluster is a Redis Cluster of three masters without replicas on 127.0.0.1.
type Cluster struct {
	// Addrs are the nodes, host:port.
	Addrs []string
	// URL is the CAO_REDIS_URL of the cluster: redis+cluster://addr1,addr2,addr3.
	URL string
	// Client is a cluster client for the test's own checks.
	Client *redis.ClusterClient
	// Nodes are plain clients of each node (CLUSTER KEYSLOT, PUBSUB NUMSUB are per node).
	Nodes []*redis.Client
}

// StartCluster starts three redis-server nodes in cluster mode, joins them with `redis-cli --cluster
// create` (all 16384 slots spread over the three) and waits until every node reports
// cluster_state:ok.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	server, cli := binary(t, "redis-server"), binary(t, "redis-cli")
	dir := t.TempDir()
	c := &Cluster{}
	for range 3 {
		port := startServer(t, server, dir, func(port int) (string, []string) {
			p := strconv.Itoa(port)
			return "", []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes-" + p + ".conf",
				"--cluster-node-timeout", "5000"}
		})
		addr := "127.0.0.1:" + strconv.Itoa(port)
		c.Addrs = append(c.Addrs, addr)
		node := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = node.Close() })
		c.Nodes = append(c.Nodes, node)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	//nolint:gosec // redis-cli from PATH, with the addresses this function chose
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		poll(t, "cluster_state:ok on "+n.Options().Addr, func() bool {
			info, err := n.ClusterInfo(ctx).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		})
	}
	c.URL = "redis+cluster://" + strings.Join(c.Addrs, ",")
	c.Client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { _ = c.Client.Close() })
	return c
}

// KeySlot asks a node for the hash slot of key (CLUSTER KEYSLOT).
func (c *Cluster) KeySlot(ctx context.Context, key string) (int64, error) {
	return c.Nodes[0].ClusterKeySlot(ctx, key).Result()
}

// Sentinel is a redis-server master that requires a password, watched by one Sentinel that requires
// a password of its own.
type Sentinel struct {
	// MasterAddr is the master's host:port; Addr the sentinel's.
	MasterAddr, Addr string
	// MasterName is the name the sentinel monitors the master under.
	MasterName string
	// Password is the master's, SentinelPassword the sentinel's.
	Password, SentinelPassword string
	// Master is a client of the master's database 0, authenticated.
	Master *redis.Client
}

// StartSentinel starts a master with a password and a sentinel monitoring it as "mymaster", and waits
// until the sentinel names the master.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	server := binary(t, "redis-server")
	dir := t.TempDir()
	s := &Sentinel{MasterName: "mymaster", Password: "master-secret", SentinelPassword: "sentinel-secret"}
	mport := startServer(t, server, dir, func(int) (string, []string) { return "", []string{"--requirepass", s.Password} })
	s.MasterAddr = "127.0.0.1:" + strconv.Itoa(mport)
	s.Master = redis.NewClient(&redis.Options{Addr: s.MasterAddr, Password: s.Password})
	t.Cleanup(func() { _ = s.Master.Close() })
	sport := startServer(t, server, dir, func(port int) (string, []string) {
		// A sentinel rewrites its configuration file, so it needs one of its own.
		conf := filepath.Join(dir, "sentinel-"+strconv.Itoa(port)+".conf")
		body := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1\nsentinel auth-pass %s %s\nrequirepass %s\n",
			s.MasterName, mport, s.MasterName, s.Password, s.SentinelPassword)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return conf, []string{"--sentinel"}
	})
	s.Addr = "127.0.0.1:" + strconv.Itoa(sport)
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, Password: s.SentinelPassword})
	t.Cleanup(func() { _ = sc.Close() })
	poll(t, "the sentinel to name "+s.MasterName, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		addr, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
		return err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(mport)
	})
	return s
}

// binary finds a Redis program or fails the test with how to install it.
func binary(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := "/usr/bin/" + name; fileExists(p) {
		return p
	}
	t.Fatalf("%s not found in PATH or /usr/bin; %s", name, installHelp)
	return ""
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// startServer runs redis-server on a free port (and, for cluster nodes, a free bus port = port +
// 10000) with the configuration file (if any) and extra arguments of extra(port), without
// persistence, and waits until it answers.
// Another process may take a port between the check and the start: then it tries other ports.
func startServer(t testing.TB, server, dir string, extra func(port int) (conf string, args []string)) int {
	t.Helper()
	var lastLog string
	for range 5 {
		port := freePort(t)
		p := strconv.Itoa(port)
		args := []string{"--port", p, "--bind", "127.0.0.1", "--appendonly", "no", "--save", "",
			"--dir", dir, "--protected-mode", "no", "--daemonize", "no"}
		conf, ex := extra(port)
		args = append(args, ex...)
		if conf != "" {
			args = append([]string{conf}, args...) // the file comes first
		}
		logPath := filepath.Join(dir, "redis-"+p+".log")
		f, err := os.Create(logPath) //nolint:gosec // a file in the test's temporary directory
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(server, args...) //nolint:gosec // redis-server from PATH, with arguments chosen here
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			_ = f.Close()
			t.Fatalf("start %s: %v; %s", server, err, installHelp)
		}
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			_ = f.Close()
			close(done)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
		})
		if ready(port, done) {
			return port
		}
		b, _ := os.ReadFile(logPath) //nolint:gosec // the log file created above
		lastLog = string(b)
	}
	t.Fatalf("redis-server did not start on a free port after 5 tries; last log:\n%s", lastLog)
	return 0
}

// ready waits until the server on port answers PING (any answer, NOAUTH included) or exits.
func ready(port int, done <-chan struct{}) bool {
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			_, werr := conn.Write([]byte("PING\r\n"))
			buf := make([]byte, 64)
			n, rerr := conn.Read(buf)
			_ = conn.Close()
			if werr == nil && rerr == nil && n > 0 && (buf[0] == '+' || buf[0] == '-') {
				return true
			}
		}
		select {
		case <-done:
			return false
		case <-tick.C:
		}
	}
	return false
}

// freePort returns a port free on 127.0.0.1 whose cluster bus port (+10000) is free too.
func freePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if port+10000 > 65535 {
			_ = ln.Close()
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		_ = ln.Close()
		if err != nil {
			continue
		}
		_ = bus.Close()
		return port
	}
	t.Fatal("no free port pair (port, port+10000) on 127.0.0.1")
	return 0
}

// poll checks cond every 10ms until it holds, failing the test after startTimeout.
func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", startTimeout, what)
		}
		<-tick.C
	}
}

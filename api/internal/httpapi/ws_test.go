package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// wsMsg is one WebSocket message as a client sees it.
type wsMsg struct {
	Type   string          `json:"type"`
	Seq    int64           `json:"seq"`
	JobID  string          `json:"job_id"`
	Step   string          `json:"step"`
	Status string          `json:"status"`
	Job    json.RawMessage `json:"job"`
	Raw    json.RawMessage `json:"-"`
}

// terminal reports whether the message is a job message with a terminal status.
func (m wsMsg) terminal() bool {
	return m.Type == "job" && (m.Status == "COMPLETED" || m.Status == "FAILED" || m.Status == "CANCELLED")
}

// wsClient dials the URL; it fails the test on error.
func dialWS(t testing.TB, ctx context.Context, u string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	c, res, err := websocket.Dial(ctx, u, opts)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial %s: HTTP %d: %v", u, status, err)
	}
	c.SetReadLimit(1 << 20)
	return c
}

// readMsg reads one message.
func readMsg(ctx context.Context, c *websocket.Conn) (wsMsg, error) {
	_, b, err := c.Read(ctx)
	if err != nil {
		return wsMsg{}, err
	}
	var m wsMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return wsMsg{}, err
	}
	m.Raw = b
	return m, nil
}

// readUntilClose reads every message until the connection ends and returns them with the close code
// (-1 when the connection ended without a close frame).
func readUntilClose(ctx context.Context, c *websocket.Conn) ([]wsMsg, websocket.StatusCode) {
	var out []wsMsg
	for {
		m, err := readMsg(ctx, c)
		if err != nil {
			return out, websocket.CloseStatus(err)
		}
		out = append(out, m)
	}
}

// requireStream checks the contract: seqs from first increase by one without gap or duplicate, and
// the last message (and only it) is the terminal job message.
func requireStream(t testing.TB, msgs []wsMsg, first int64) {
	t.Helper()
	require.NotEmpty(t, msgs)
	for i, m := range msgs {
		require.Equal(t, first+int64(i), m.Seq, "message %d: %s", i, m.Raw)
		require.NotEqual(t, "snapshot", m.Type)
		require.Equal(t, i == len(msgs)-1, m.terminal(), "message %d: %s", i, m.Raw)
	}
}

// getEvents reads GET /api/v1/jobs/{id}/events?after_seq=N as raw messages.
func (a *testAPI) getEvents(t testing.TB, jobID string, after int64) []wsMsg {
	t.Helper()
	var res struct {
		Events []json.RawMessage `json:"events"`
	}
	require.Equal(t, http.StatusOK, a.do(t, http.MethodGet, "/api/v1/jobs/"+jobID+"/events?after_seq="+strconv.FormatInt(after, 10), nil, &res))
	out := make([]wsMsg, len(res.Events))
	for i, raw := range res.Events {
		require.NoError(t, json.Unmarshal(raw, &out[i]))
		out[i].Raw = raw
	}
	return out
}

// getJob reads GET /api/v1/jobs/{id}'s job object.
func (a *testAPI) getJob(t testing.TB, jobID string) json.RawMessage {
	t.Helper()
	var res struct {
		Job json.RawMessage `json:"job"`
	}
	require.Equal(t, http.StatusOK, a.do(t, http.MethodGet, "/api/v1/jobs/"+jobID, nil, &res))
	return res.Job
}

// requireSameMessages checks that two message lists carry the same JSON, one by one.
func requireSameMessages(t testing.TB, want, got []wsMsg) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.JSONEq(t, string(want[i].Raw), string(got[i].Raw), "message %d", i)
	}
}

func TestWSProtocol(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jobID := api.createJob(t)

	// Snapshot first, taken before any step runs; then every change with seq+1, terminal, close 1000.
	c := dialWS(t, ctx, api.WSURL(jobID, ""), nil)
	snap, err := readMsg(ctx, c)
	require.NoError(t, err)
	require.Equal(t, "snapshot", snap.Type)
	var snapJob struct {
		ID      string `json:"id"`
		Status  string `json:"status"`
		LastSeq int64  `json:"last_seq"`
		Steps   []struct {
			Name string `json:"name"`
		} `json:"steps"`
	}
	require.NoError(t, json.Unmarshal(snap.Job, &snapJob))
	require.Equal(t, jobID, snapJob.ID)
	require.Equal(t, snap.Seq, snapJob.LastSeq)
	require.Positive(t, snap.Seq)
	require.Len(t, snapJob.Steps, len(pipelineSteps))
	requireSameKeys(t, api.getJob(t, jobID), snap.Job)

	api.startRunner(t)
	live, code := readUntilClose(ctx, c)
	require.Equal(t, websocket.StatusNormalClosure, code)
	requireStream(t, live, snap.Seq+1)
	require.Equal(t, "COMPLETED", live[len(live)-1].Status)
	for _, m := range live {
		require.Equal(t, jobID, m.JobID)
	}

	// GET /events is the same stream: the part after the snapshot is message for message identical.
	all := api.getEvents(t, jobID, 0)
	requireStream(t, all, 1)
	requireSameMessages(t, all[snap.Seq:], live)

	// after_seq=0 replays the whole log from Postgres, identical to GET /events, then closes 1000
	// because the job is terminal.
	c = dialWS(t, ctx, api.WSURL(jobID, "after_seq=0"), nil)
	replay, code := readUntilClose(ctx, c)
	require.Equal(t, websocket.StatusNormalClosure, code)
	requireSameMessages(t, all, replay)

	// A terminal job: the snapshot (equal to GET) and close 1000 at once.
	c = dialWS(t, ctx, api.WSURL(jobID, ""), nil)
	msgs, code := readUntilClose(ctx, c)
	require.Equal(t, websocket.StatusNormalClosure, code)
	require.Len(t, msgs, 1)
	require.Equal(t, "snapshot", msgs[0].Type)
	require.Equal(t, all[len(all)-1].Seq, msgs[0].Seq)
	require.JSONEq(t, string(api.getJob(t, jobID)), string(msgs[0].Job))

	// A client that already has the terminal event (after_seq=last) is closed 1000 with nothing.
	c = dialWS(t, ctx, api.WSURL(jobID, "after_seq="+strconv.FormatInt(all[len(all)-1].Seq, 10)), nil)
	msgs, code = readUntilClose(ctx, c)
	require.Equal(t, websocket.StatusNormalClosure, code)
	require.Empty(t, msgs)

	// The gauge went back to zero once every connection ended.
	testinfra.Eventually(t, 10*time.Second, func() bool { return metricValue(t, api, "cao_websocket_clients") == 0 },
		"cao_websocket_clients back to 0")
}

// requireSameKeys checks that two JSON objects have the same top-level fields.
func requireSameKeys(t testing.TB, want, got json.RawMessage) {
	t.Helper()
	var a, b map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(want, &a))
	require.NoError(t, json.Unmarshal(got, &b))
	for k := range a {
		require.Contains(t, b, k)
	}
	require.Len(t, b, len(a))
}

// metricValue reads one unlabelled metric from GET /metrics.
func metricValue(t testing.TB, api *testAPI, name string) float64 {
	t.Helper()
	res, err := http.Get(api.URL + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("metric %s not in /metrics", name)
	return 0
}

func TestWSLostPublishAndGap(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	polling := env.startAPI(t, nodeOptions{WS: func(c *wsConfig) { c.stream.PollInterval = 50 * time.Millisecond }})
	noPoll := env.startAPI(t, nodeOptions{WS: func(c *wsConfig) { c.stream.PollInterval = time.Hour }})
	jobID := polling.createJob(t)

	c1 := dialWS(t, ctx, polling.WSURL(jobID, ""), nil)
	defer c1.CloseNow()
	c2 := dialWS(t, ctx, noPoll.WSURL(jobID, ""), nil)
	defer c2.CloseNow()
	snap1, err := readMsg(ctx, c1)
	require.NoError(t, err)
	snap2, err := readMsg(ctx, c2)
	require.NoError(t, err)
	require.Equal(t, snap1.Seq, snap2.Seq)
	base := snap1.Seq

	// Committed but never published (the process died after commit): the poll delivers them.
	emitEvents(t, polling.Node, jobID, 5, 2, false)
	for i := int64(1); i <= 5; i++ {
		m, err := readMsg(ctx, c1)
		require.NoError(t, err)
		require.Equal(t, base+i, m.Seq)
	}

	// Then one published event: on the replica that does not poll, it is ahead of what the client
	// has, so the server reads the gap from the log at once and sends everything in order.
	emitEvents(t, polling.Node, jobID, 1, 1, true)
	for _, c := range []*websocket.Conn{c1, c2} {
		var got []wsMsg
		for i := int64(1); i <= 6; i++ {
			if c == c1 && i <= 5 {
				continue
			}
			m, err := readMsg(ctx, c)
			require.NoError(t, err)
			require.Equal(t, base+i, m.Seq)
			got = append(got, m)
		}
		want := polling.getEvents(t, jobID, base+int64(6-len(got)))
		requireSameMessages(t, want, got)
	}
}

func TestWSAcrossReplicas(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := env.startAPI(t, nodeOptions{})
	// B never polls: whatever it sends after the snapshot came through Redis pub/sub from A.
	b := env.startAPI(t, nodeOptions{WS: func(c *wsConfig) { c.stream.PollInterval = time.Hour }})

	jobID := a.createJob(t)
	c := dialWS(t, ctx, b.WSURL(jobID, ""), nil)
	snap, err := readMsg(ctx, c)
	require.NoError(t, err)
	require.Equal(t, "snapshot", snap.Type)
	a.startRunner(t) // the job runs in A's process only

	live, code := readUntilClose(ctx, c)
	require.Equal(t, websocket.StatusNormalClosure, code)
	requireStream(t, live, snap.Seq+1)
	require.Equal(t, "COMPLETED", live[len(live)-1].Status)
	requireSameMessages(t, a.getEvents(t, jobID, snap.Seq), live)
}

func TestWSReconnectAfterSeq(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jobID := api.createJob(t)

	// Read two messages per connection, drop it abruptly, reconnect with after_seq=last: events keep
	// happening while the client is away and while the server replays.
	var all []wsMsg
	last, conns := int64(0), 0
	api.startRunner(t)
	for done := false; !done; conns++ {
		require.Less(t, conns, 200, "too many reconnections")
		c := dialWS(t, ctx, api.WSURL(jobID, "after_seq="+strconv.FormatInt(last, 10)), nil)
		for i := 0; i < 2; i++ {
			m, err := readMsg(ctx, c)
			if err != nil {
				require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err), "read: %v", err)
				done = true
				break
			}
			all = append(all, m)
			last = m.Seq
		}
		_ = c.CloseNow()
	}
	require.Greater(t, conns, 3)
	requireStream(t, all, 1)
	requireSameMessages(t, api.getEvents(t, jobID, 0), all)
}

// raiseFileLimit lifts the soft open-files limit to the hard one (many sockets in one process).
func raiseFileLimit(t testing.TB, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	}
	require.GreaterOrEqual(t, lim.Cur, want, "open files limit %d is too low; raise it with ulimit -n", lim.Cur)
}

func TestWSThousandClients(t *testing.T) {
	t.Parallel()
	const clients = 1000
	raiseFileLimit(t, 2*clients+200)
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	jobID := api.createJob(t)

	// Connect everyone before the job runs; each client reads on its own goroutine.
	type result struct {
		msgs []wsMsg
		code websocket.StatusCode
		err  error
	}
	results := make([]result, clients)
	snapshots := make(chan struct{}, clients)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			c, _, err := websocket.Dial(ctx, api.WSURL(jobID, ""), nil)
			<-sem
			if err != nil {
				results[i] = result{err: err}
				snapshots <- struct{}{}
				return
			}
			defer c.CloseNow()
			first, err := readMsg(ctx, c)
			if err != nil || first.Type != "snapshot" {
				results[i] = result{err: errors.Join(err, errors.New("no snapshot first"))}
				snapshots <- struct{}{}
				return
			}
			snapshots <- struct{}{}
			msgs, code := readUntilClose(ctx, c)
			results[i] = result{msgs: append([]wsMsg{first}, msgs...), code: code}
		}()
	}
	for range clients {
		<-snapshots
	}
	require.EqualValues(t, clients, metricValue(t, api, "cao_websocket_clients"))
	api.startRunner(t)
	wg.Wait()

	var want []wsMsg
	for i, r := range results {
		require.NoError(t, r.err, "client %d", i)
		require.Equal(t, websocket.StatusNormalClosure, r.code, "client %d", i)
		snap := r.msgs[0]
		if want == nil {
			want = api.getEvents(t, jobID, snap.Seq)
			requireStream(t, want, snap.Seq+1)
		}
		requireSameMessages(t, want, r.msgs[1:])
	}
}

// smallBuffers shrinks the kernel socket buffers of the server's accepted connections, so that a
// client that does not read blocks the server's writes after a few kilobytes instead of megabytes.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

func TestWSSlowClientClosed(t *testing.T) {
	t.Parallel()
	const (
		fast   = 20
		events = 2000
	)
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{
		Listener: func(s *httptest.Server) { s.Listener = smallBuffers{s.Listener} },
		// Long enough for the test to drain the slow client itself and see the close frame.
		WS: func(c *wsConfig) { c.writeTimeout = time.Minute },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	jobID := api.createJob(t)

	// The slow client has a tiny receive window and does not read until the end.
	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	slowHTTP := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	defer slowHTTP.CloseIdleConnections()
	slow := dialWS(t, ctx, api.WSURL(jobID, ""), &websocket.DialOptions{HTTPClient: slowHTTP})
	defer slow.CloseNow()

	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		lastAt  = make([]time.Time, fast)
		results = make([][]wsMsg, fast)
		base    int64
	)
	conns := make([]*websocket.Conn, fast)
	for i := range conns {
		conns[i] = dialWS(t, ctx, api.WSURL(jobID, ""), nil)
		snap, err := readMsg(ctx, conns[i])
		require.NoError(t, err)
		base = snap.Seq
	}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.CloseNow()
			for {
				m, err := readMsg(ctx, c)
				if err != nil {
					return
				}
				mu.Lock()
				results[i] = append(results[i], m)
				lastAt[i] = time.Now()
				n := len(results[i])
				mu.Unlock()
				if n == events {
					return
				}
			}
		}()
	}

	// 100 transactions of 20 events, each published after commit, in chunks of 200. Between chunks the
	// test waits until every fast client is within 100 events of the head (well inside the 256-message
	// bound), so a CPU-starved test machine cannot make a healthy reader look slow; the slow client
	// never reads at all and overflows whatever the pace.
	const chunk = 200
	for sent := 0; sent < events; sent += chunk {
		emitEvents(t, api.Node, jobID, chunk, 20, true)
		head := sent + chunk
		testinfra.Eventually(t, 20*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for i := range results {
				if len(results[i]) < head-100 {
					return false
				}
			}
			return true
		}, "fast clients keep within 100 events of the head")
	}
	emittedAt := time.Now()
	waitCh := make(chan struct{})
	go func() { wg.Wait(); close(waitCh) }()
	select {
	case <-waitCh:
	case <-time.After(20 * time.Second):
		t.Fatal("fast clients did not receive every event within 20s of the last publish")
	}
	for i := range results {
		require.Len(t, results[i], events, "fast client %d", i)
		for j, m := range results[i] {
			require.Equal(t, base+int64(j)+1, m.Seq, "fast client %d message %d", i, j)
		}
		// Promptly: the last event reached every fast client shortly after it was published.
		require.Less(t, lastAt[i].Sub(emittedAt), 5*time.Second, "fast client %d lagged", i)
	}

	// Now drain the slow client: what it got is gap-free, then the server closed it with 1013.
	msgs, code := readUntilClose(ctx, slow)
	require.Equal(t, websocket.StatusTryAgainLater, code)
	require.Equal(t, "snapshot", msgs[0].Type)
	require.Less(t, len(msgs)-1, events, "the slow client should not have received everything")
	for j, m := range msgs[1:] {
		require.Equal(t, base+int64(j)+1, m.Seq)
	}
	require.EqualValues(t, 1, metricValue(t, api, "cao_websocket_slow_closed_total"))
}

func TestWSRejects(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{
		APIKeys: []string{"k1"}, AllowedOrigins: []string{"https://app.example.com"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	auth := http.Header{"Authorization": {"Bearer k1"}}
	jobID := api.createJob(t, "Authorization", "Bearer k1")

	type errBody struct {
		Success bool `json:"success"`
		Error   struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	tests := []struct {
		name   string
		url    string
		header http.Header
		status int
		code   string
	}{
		{"unknown job", api.WSURL("00000000-0000-4000-8000-000000000000", ""), auth, http.StatusNotFound, "job_not_found"},
		{"unknown job with after_seq", api.WSURL("00000000-0000-4000-8000-000000000000", "after_seq=3"), auth, http.StatusNotFound, "job_not_found"},
		{"malformed id", api.WSURL("not-a-uuid", ""), auth, http.StatusBadRequest, "invalid_job_id"},
		{"bad after_seq", api.WSURL(jobID, "after_seq=-1"), auth, http.StatusBadRequest, "invalid_query"},
		{"no api key", api.WSURL(jobID, ""), nil, http.StatusUnauthorized, "unauthorized"},
		{"wrong api key", api.WSURL(jobID, "api_key=nope"), nil, http.StatusUnauthorized, "unauthorized"},
		{"foreign origin", api.WSURL(jobID, ""), http.Header{"Authorization": {"Bearer k1"}, "Origin": {"https://evil.example.com"}}, http.StatusForbidden, "origin_not_allowed"},
		{"allowed host over http", api.WSURL(jobID, ""), http.Header{"Authorization": {"Bearer k1"}, "Origin": {"http://app.example.com"}}, http.StatusForbidden, "origin_not_allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, res, err := websocket.Dial(ctx, tc.url, &websocket.DialOptions{HTTPHeader: tc.header})
			require.Error(t, err)
			require.Nil(t, c)
			require.NotNil(t, res)
			require.Equal(t, tc.status, res.StatusCode)
			require.Contains(t, res.Header.Get("Content-Type"), "application/json")
			b, _ := io.ReadAll(res.Body)
			var body errBody
			require.NoError(t, json.Unmarshal(b, &body), "body: %s", b)
			require.False(t, body.Success)
			require.Equal(t, tc.code, body.Error.Code)
		})
	}

	// Accepted: the key as query parameter (browsers), an allowed origin, and the same origin.
	ok := []struct {
		name   string
		url    string
		header http.Header
	}{
		{"api_key query", api.WSURL(jobID, "api_key=k1"), nil},
		{"allowed origin", api.WSURL(jobID, ""), http.Header{"Authorization": {"Bearer k1"}, "Origin": {"https://app.example.com"}}},
		{"same origin", api.WSURL(jobID, "api_key=k1"), http.Header{"Origin": {api.URL}}},
	}
	for _, tc := range ok {
		c, _, err := websocket.Dial(ctx, tc.url, &websocket.DialOptions{HTTPHeader: tc.header})
		require.NoError(t, err, tc.name)
		m, err := readMsg(ctx, c)
		require.NoError(t, err, tc.name)
		require.Equal(t, "snapshot", m.Type, tc.name)
		_ = c.Close(websocket.StatusNormalClosure, "")
	}

	// A plain GET is told to upgrade, in the same envelope.
	var body errBody
	require.Equal(t, http.StatusUpgradeRequired, api.do(t, http.MethodGet, "/ws/"+jobID, nil, &body, "Authorization", "Bearer k1"))
	require.Equal(t, "upgrade_required", body.Error.Code)

	// Refused and finished connections leave no hub subscription behind (a job's topic holds one
	// while it lives; pkg/events' TestStreamsReleaseTopics checks the topics themselves).
	testinfra.Eventually(t, 10*time.Second, func() bool {
		return api.Node.Hub.Subscribers() == 0
	}, "topics and hub subscriptions released")
}

func TestWSPingDropsDeadPeer(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{WS: func(c *wsConfig) {
		c.pingInterval, c.pongTimeout = 50*time.Millisecond, 200*time.Millisecond
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jobID := api.createJob(t)

	// A peer that stops reading never answers pings (pongs are sent by the reader); one that reads does.
	dead := dialWS(t, ctx, api.WSURL(jobID, ""), nil)
	defer dead.CloseNow()
	_, err := readMsg(ctx, dead)
	require.NoError(t, err)
	alive := dialWS(t, ctx, api.WSURL(jobID, ""), nil)
	defer alive.CloseNow()
	got := make(chan wsMsg, 16)
	go func() {
		defer close(got)
		for {
			m, err := readMsg(ctx, alive)
			if err != nil {
				return
			}
			got <- m
		}
	}()
	snap := <-got
	require.Equal(t, "snapshot", snap.Type)

	testinfra.Eventually(t, 10*time.Second, func() bool { return metricValue(t, api, "cao_websocket_clients") == 1 },
		"the peer that does not answer pings is dropped")
	// The live one has been pinged many times meanwhile and still gets events.
	emitEvents(t, api.Node, jobID, 1, 1, true)
	select {
	case m := <-got:
		require.Equal(t, snap.Seq+1, m.Seq)
	case <-ctx.Done():
		t.Fatal("the client that answers pings stopped receiving")
	}
	require.EqualValues(t, 1, metricValue(t, api, "cao_websocket_clients"))
}

func TestWSStopGoingAway(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	api := env.startAPI(t, nodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jobID := api.createJob(t)
	c := dialWS(t, ctx, api.WSURL(jobID, ""), nil)
	defer c.CloseNow()
	_, err := readMsg(ctx, c)
	require.NoError(t, err)

	stopped := make(chan error, 1)
	go func() { stopped <- api.Server.Stop(ctx) }()
	msgs, code := readUntilClose(ctx, c)
	require.Empty(t, msgs)
	require.Equal(t, websocket.StatusGoingAway, code)
	require.NoError(t, <-stopped)
	require.NoError(t, api.Server.Stop(ctx), "stop twice")

	// New upgrades are refused with the envelope until the process exits.
	_, res, err := websocket.Dial(ctx, api.WSURL(jobID, ""), nil)
	require.Error(t, err)
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
}

func TestWSOriginAllowed(t *testing.T) {
	t.Parallel()
	patterns, anyOrigin := originPatterns([]string{"https://app.example.com", "http://localhost:3000"}, "https://cao.example.com")
	h := &wsHub{origins: patterns}
	tests := []struct {
		origin, host string
		want         bool
	}{
		{"", "api.example.com", true},                          // not a browser
		{"https://api.example.com", "api.example.com", true},   // same origin
		{"https://app.example.com", "api.example.com", true},   // CAO_ALLOWED_ORIGINS
		{"https://APP.example.com", "api.example.com", true},   // hosts are case-insensitive
		{"http://localhost:3000", "api.example.com", true},     // with its port
		{"https://cao.example.com", "10.0.0.7:8000", true},     // CAO_PUBLIC_URL behind a proxy
		{"http://app.example.com", "api.example.com", false},   // scheme differs
		{"http://localhost:3001", "api.example.com", false},    // port differs
		{"https://evil.example.com", "api.example.com", false}, // not listed
		{"null", "api.example.com", false},                     // sandboxed iframe, file://
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodGet, "http://"+tc.host+"/ws/x", nil)
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		require.Equal(t, tc.want, h.originAllowed(r), "origin %q host %q", tc.origin, tc.host)
	}
	require.False(t, anyOrigin)
	_, anyOrigin = originPatterns([]string{"*"}, "")
	require.True(t, anyOrigin)
}

package redisconn_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/pubsub"
	"github.com/cao-run/cao/pkg/redisconn"
	"github.com/cao-run/cao/pkg/redisconn/redisconntest"
)

func TestParseForms(t *testing.T) {
	t.Parallel()
	cases := []struct {
		url    string
		mode   redisconn.Mode
		addrs  []string
		master string
		db     int
		tls    bool
		user   string
		pass   string
	}{
		{url: "redis://127.0.0.1:6379/0", mode: redisconn.Single, addrs: []string{"127.0.0.1:6379"}},
		{url: "redis://:pw@h/3", mode: redisconn.Single, addrs: []string{"h:6379"}, db: 3, pass: "pw"},
		{url: "rediss://u:pw@h:6380/1?dial_timeout=3s", mode: redisconn.Single, addrs: []string{"h:6380"}, db: 1, tls: true, user: "u", pass: "pw"},
		{url: "unix:///run/redis.sock?db=2", mode: redisconn.Single, addrs: []string{"/run/redis.sock"}, db: 2},
		{url: "redis+cluster://h1:7000,h2:7001,h3:7002", mode: redisconn.Cluster, addrs: []string{"h1:7000", "h2:7001", "h3:7002"}},
		{url: "redis+cluster://h1:7000,h2:7001/?password=p%40ss&read_timeout=2s", mode: redisconn.Cluster, addrs: []string{"h1:7000", "h2:7001"}, pass: "p@ss"},
		{url: "redis+cluster://u:p%2Cw@h1,[::1]:7001/0", mode: redisconn.Cluster, addrs: []string{"h1:6379", "[::1]:7001"}, user: "u", pass: "p,w"},
		{url: "rediss+cluster://h1:7000?username=u&password=pw", mode: redisconn.Cluster, addrs: []string{"h1:7000"}, tls: true, user: "u", pass: "pw"},
		{url: "redis+sentinel://s1:26379,s2:26380/mymaster/0", mode: redisconn.Sentinel, addrs: []string{"s1:26379", "s2:26380"}, master: "mymaster"},
		{url: "redis+sentinel://:pw@s1,s2/mymaster/4?sentinel_password=sp&pool_size=5", mode: redisconn.Sentinel, addrs: []string{"s1:26379", "s2:26379"}, master: "mymaster", db: 4, pass: "pw"},
		{url: "rediss+sentinel://s1:1/m", mode: redisconn.Sentinel, addrs: []string{"s1:1"}, master: "m", tls: true},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			c, err := redisconn.Parse(tc.url)
			require.NoError(t, err)
			require.Equal(t, tc.mode, c.Mode)
			require.Equal(t, tc.addrs, c.Addrs)
			require.Equal(t, tc.master, c.MasterName)
			require.Equal(t, tc.db, c.DB)
			require.Equal(t, tc.tls, c.TLS)
			require.NotContains(t, c.String(), "pw", "no credentials in the description")

			rdb := c.NewClient()
			defer rdb.Close()
			// The client really carries what the URL says.
			switch cl := rdb.(type) {
			case *redis.ClusterClient:
				require.Equal(t, redisconn.Cluster, tc.mode)
				o := cl.Options()
				require.Equal(t, tc.addrs, o.Addrs)
				require.Equal(t, tc.user, o.Username)
				require.Equal(t, tc.pass, o.Password)
				require.Equal(t, tc.tls, o.TLSConfig != nil)
				require.Zero(t, pubsub.DB(cl), "a cluster has database 0 only")
			case *redis.Client:
				require.NotEqual(t, redisconn.Cluster, tc.mode)
				o := cl.Options()
				require.Equal(t, tc.db, o.DB)
				require.Equal(t, tc.db, pubsub.DB(cl), "channels are named after the database")
				require.Equal(t, tc.user, o.Username)
				require.Equal(t, tc.pass, o.Password)
				require.Equal(t, tc.tls, o.TLSConfig != nil)
				if tc.mode == redisconn.Single {
					require.Equal(t, tc.addrs[0], o.Addr)
				}
			default:
				t.Fatalf("client type %T", rdb)
			}
			// asynqmon's connection option makes a client of the same kind.
			made := c.AsynqConnOpt().MakeRedisClient()
			defer made.(redis.UniversalClient).Close()
			require.IsType(t, rdb, made)
		})
	}
}

func TestParseRefuses(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"http://x":                                    "unsupported scheme",
		"no url":                                      "not a URL",
		"unix+cluster:///x":                           "unsupported scheme",
		"redis+ring://h1,h2":                          "unsupported scheme",
		"redis+cluster://h1:7000,h2:7001/3":           "no database numbers",
		"redis+cluster://h1:7000?db=2":                "no database numbers",
		"redis+cluster://h1:7000,,h2:7001":            "empty host",
		"redis+cluster://h1:70000":                    "bad port",
		"redis+cluster://h1:x":                        "bad port",
		"redis+cluster://::1:7000":                    "bad host",
		"redis+cluster://u:secret@h1?password=other":  "given both",
		"redis+cluster://h1:7000?bogus=1":             "unexpected option",
		"redis+cluster://h1:7000#frag":                "fragment",
		"redis+sentinel://s1:26379":                   "must name the master",
		"redis+sentinel://s1:26379/m/1/2":             "must name the master",
		"redis+sentinel://s1:26379/m/x":               "invalid database number",
		"redis+sentinel://s1:26379/m?master_name=n":   "named by the path",
		"redis+sentinel://s1:26379/m?read_timeout=zz": "read_timeout",
		"redis://h:6379/notadb":                       "invalid database number",
		"redis://u:sec ret@h/0":                       "invalid",
		"redis://u:sec/ret@h/0":                       "invalid URL",
		"redis+cluster://u:sec/ret@h1:7000":           "host 1 of the host list: bad port",
		"redis+sentinel://s1,u:sec/ret@s2/m":          "host 2 of the host list: bad port",
	}
	for u, want := range cases {
		t.Run(u, func(t *testing.T) {
			_, err := redisconn.Parse(u)
			require.Error(t, err)
			require.Contains(t, err.Error(), want)
			for _, secret := range []string{"secret", "sec", "ret", "other"} {
				require.NotContains(t, err.Error(), secret, "never echo a password")
			}
		})
	}
}

// A cluster URL gives a client that works across all slots, for keys, scripts, pub/sub and asynq.
func TestClusterClient(t *testing.T) {
	t.Parallel()
	cl := redisconntest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := redisconn.Parse(cl.URL)
	require.NoError(t, err)
	require.Equal(t, "cluster "+strings.Join(cl.Addrs, ","), c.String())
	rdb := c.NewClient()
	defer rdb.Close()
	require.IsType(t, &redis.ClusterClient{}, rdb)

	// Keys spread over every node.
	owners := map[string]bool{}
	for i := range 50 {
		k := fmt.Sprintf("k%d", i)
		require.NoError(t, rdb.Set(ctx, k, i, time.Minute).Err())
		for _, n := range cl.Nodes {
			if n.Exists(ctx, k).Val() == 1 {
				owners[n.Options().Addr] = true
			}
		}
	}
	require.Len(t, owners, 3, "keys live on all three masters")

	// Pub/sub reaches a subscriber on another client.
	sub := cl.Client.Subscribe(ctx, "cao:{db0}:events")
	defer sub.Close()
	_, err = sub.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, rdb.Publish(ctx, "cao:{db0}:events", "hello").Err())
	msg, err := sub.ReceiveMessage(ctx)
	require.NoError(t, err)
	require.Equal(t, "hello", msg.Payload)

	// Asynq over the shared client, inspected through asynqmon's connection option.
	q := asynq.NewClientFromRedisClient(rdb)
	for _, queue := range []string{"heavy", "medium", "default"} {
		_, err = q.EnqueueContext(ctx, asynq.NewTask("t", nil), asynq.Queue(queue), asynq.TaskID("id-"+queue))
		require.NoError(t, err)
	}
	insp := asynq.NewInspector(c.AsynqConnOpt())
	defer insp.Close()
	queues, err := insp.Queues()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"heavy", "medium", "default"}, queues)
	for _, queue := range queues {
		info, err := insp.GetQueueInfo(queue)
		require.NoError(t, err)
		require.Equal(t, 1, info.Pending)
	}
}

// A sentinel URL finds the master, authenticates to the sentinel and to the master with their own
// passwords, and selects the database of the path.
func TestSentinelClient(t *testing.T) {
	t.Parallel()
	s := redisconntest.StartSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := fmt.Sprintf("redis+sentinel://:%s@%s/%s/5?sentinel_password=%s", s.Password, s.Addr, s.MasterName, s.SentinelPassword)
	c, err := redisconn.Parse(u)
	require.NoError(t, err)
	require.Equal(t, "master mymaster via sentinels "+s.Addr, c.String())
	rdb := c.NewClient()
	defer rdb.Close()
	require.Equal(t, 5, pubsub.DB(rdb))
	require.NoError(t, rdb.Set(ctx, "where", "db5", 0).Err())
	db5 := redis.NewClient(&redis.Options{Addr: s.MasterAddr, Password: s.Password, DB: 5})
	defer db5.Close()
	require.Equal(t, "db5", db5.Get(ctx, "where").Val())
	require.Zero(t, s.Master.Exists(ctx, "where").Val(), "not in database 0")

	made := c.AsynqConnOpt().MakeRedisClient().(redis.UniversalClient)
	defer made.Close()
	require.Equal(t, "db5", made.Get(ctx, "where").Val())

	// Without the sentinel's password the sentinel refuses.
	c, err = redisconn.Parse(fmt.Sprintf("redis+sentinel://:%s@%s/%s/5", s.Password, s.Addr, s.MasterName))
	require.NoError(t, err)
	bad := c.NewClient()
	defer bad.Close()
	require.Error(t, bad.Ping(ctx).Err())
}

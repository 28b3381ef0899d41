package pubsub_test

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/pubsub"
)

func TestChannelCarriesDatabaseAndPrefix(t *testing.T) {
	t.Parallel()
	c3 := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DB: 3})
	c0 := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}, DB: 5})
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	t.Cleanup(func() {
		for _, c := range []redis.UniversalClient{c3, c0, ring, cluster} {
			_ = c.Close()
		}
	})

	require.Equal(t, "cao:{db3}:events", pubsub.Channel(c3, "", "events"))
	require.Equal(t, "cao:{db0}:events", pubsub.Channel(c0, pubsub.DefaultPrefix, "events"))
	require.Equal(t, "acme:{db3}:sem:wake", pubsub.Channel(c3, "acme:", "sem:wake"))
	require.Equal(t, 5, pubsub.DB(ring))
	require.Equal(t, 0, pubsub.DB(cluster))
}

// TestBatcherJoinsInOrder: items added while a send runs go out together in the next one, in order,
// never more than max at a time.
func TestBatcherJoinsInOrder(t *testing.T) {
	t.Parallel()
	sent := make(chan []int, 16)
	started, release := make(chan struct{}), make(chan struct{})
	first := true
	b := pubsub.NewBatcher(3, func(items []int) {
		if first {
			first = false
			close(started)
			<-release // the first send is on its way while more items come
		}
		sent <- append([]int(nil), items...)
	})
	b.Add(1)
	<-started
	b.Add(2, 3)
	b.Add(4)
	b.Add(5)
	close(release)
	var got [][]int
	for n := 0; n < 5; {
		s := <-sent
		got = append(got, s)
		n += len(s)
	}
	require.Equal(t, [][]int{{1}, {2, 3, 4}, {5}}, got)
}

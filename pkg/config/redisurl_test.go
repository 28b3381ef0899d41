package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// CAO_REDIS_URL names one server, a Redis Cluster or a Sentinel master (package redisconn).
func TestRedisURLForms(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"redis://127.0.0.1:6379/0", "rediss://u:p@h:6380/2", "unix:///run/redis.sock?db=1",
		"redis+cluster://h1:7000,h2:7001,h3:7002", "rediss+cluster://h1:7000,h2:7001/?password=p",
		"redis+sentinel://s1:26379,s2:26379/mymaster/0", "redis+sentinel://:p@s1/mymaster?sentinel_password=q",
	} {
		c, err := Parse(env(map[string]string{"CAO_REDIS_URL": u}))
		require.NoError(t, err, u)
		require.Equal(t, u, c.RedisURL)
	}
	for _, u := range []string{
		"http://x", "redis+cluster://u:hunter2@h1:7000/3", "redis+sentinel://u:hunter2@s1:26379",
		"redis://u:hunter2@h/x", "redis+cluster://u:hunter2@h1:7000,:7001",
	} {
		_, err := Parse(env(map[string]string{"CAO_REDIS_URL": u}))
		require.Error(t, err, u)
		require.Contains(t, err.Error(), "CAO_REDIS_URL")
		require.NotContains(t, err.Error(), "hunter2", "a password in a bad URL is not echoed")
	}
}

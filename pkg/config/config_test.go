package config

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse(env(nil))
	require.NoError(t, err)
	require.Equal(t, DefaultDatabaseURL, c.DatabaseURL)
	require.Equal(t, DefaultRedisURL, c.RedisURL)
	require.Equal(t, "deploy/registry.yaml", c.RegistryPath)
	require.Equal(t, ":8000", c.HTTPAddr)
	require.Equal(t, map[string]int{"heavy": 6, "medium": 3, "default": 1}, c.WorkerQueues)
	require.Equal(t, 20, c.WorkerConcurrency)
	require.True(t, c.AutoMigrate)
	require.Equal(t, slog.LevelInfo, c.LogLevel)
	require.Equal(t, "json", c.LogFormat)
	require.Equal(t, 10*time.Second, c.StepLeaseTTL)
	require.Error(t, c.CheckAuth(), "no keys and auth not off")
}

func TestValues(t *testing.T) {
	t.Parallel()
	c, err := Parse(env(map[string]string{
		"CAO_API_KEYS": " a, b ,", "CAO_WORKER_QUEUES": "heavy=2, llm=5", "CAO_WORKER_CONCURRENCY": "7",
		"CAO_AUTO_MIGRATE": "false", "CAO_LOG_LEVEL": "DEBUG", "CAO_LOG_FORMAT": "text",
		"CAO_ALLOWED_ORIGINS": "https://a.example,http://localhost:3000", "CAO_PUBLIC_URL": "https://cao.example/",
		"CAO_STEP_LEASE_TTL": "3s",
	}))
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, c.APIKeys)
	require.Equal(t, map[string]int{"heavy": 2, "llm": 5}, c.WorkerQueues)
	require.Equal(t, 7, c.WorkerConcurrency)
	require.False(t, c.AutoMigrate)
	require.Equal(t, slog.LevelDebug, c.LogLevel)
	require.Equal(t, "https://cao.example", c.PublicURL)
	require.Equal(t, 3*time.Second, c.StepLeaseTTL)
	require.NoError(t, c.CheckAuth())
}

func TestBadValuesNameTheVariable(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"CAO_WORKER_QUEUES":      "heavy=x",
		"CAO_WORKER_CONCURRENCY": "0",
		"CAO_AUTO_MIGRATE":       "maybe",
		"CAO_LOG_LEVEL":          "loud",
		"CAO_LOG_FORMAT":         "xml",
		"CAO_DATABASE_URL":       "mysql://x",
		"CAO_REDIS_URL":          "http://x",
		"CAO_HTTP_ADDR":          "8000",
		"CAO_AUTH":               "sometimes",
		"CAO_STEP_LEASE_TTL":     "10",
		"CAO_DATABASE_MAX_CONNS": "0",
		"CAO_ALLOWED_ORIGINS":    "not a url",
		"CAO_PUBLIC_URL":         "ftp://x",
	}
	for name, val := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse(env(map[string]string{name: val}))
			require.Error(t, err)
			require.Contains(t, err.Error(), name)
		})
	}
	// A password in a bad URL is not echoed.
	_, err := Parse(env(map[string]string{"CAO_DATABASE_URL": "mysql://u:hunter2@x/db"}))
	require.NotContains(t, err.Error(), "hunter2")
	// Several bad variables are all reported.
	_, err = Parse(env(map[string]string{"CAO_LOG_LEVEL": "x", "CAO_LOG_FORMAT": "y"}))
	require.Contains(t, err.Error(), "CAO_LOG_LEVEL")
	require.Contains(t, err.Error(), "CAO_LOG_FORMAT")
}

func TestAuthOff(t *testing.T) {
	t.Parallel()
	c, err := Parse(env(map[string]string{"CAO_AUTH": "off"}))
	require.NoError(t, err)
	require.NoError(t, c.CheckAuth())
}

package config

import (
	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/registry"

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
	require.Equal(t, []auth.Key{{Tenant: "default", Secret: "a"}, {Tenant: "default", Secret: "b"}}, c.APIKeys)
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

func TestKeysAndLimits(t *testing.T) {
	t.Parallel()
	c, err := Parse(env(map[string]string{
		"CAO_API_KEYS": "acme:k1, globex:k2,k3", "CAO_ADMIN_KEYS": "ops:root1",
		"CAO_RATE_LIMIT": "50/1s", "CAO_HTTP_READ_TIMEOUT": "5s", "CAO_WS_MAX_PER_TENANT": "7",
	}))
	require.NoError(t, err)
	require.Equal(t, []auth.Key{
		{Tenant: "acme", Secret: "k1"}, {Tenant: "globex", Secret: "k2"}, {Tenant: "default", Secret: "k3"},
	}, c.APIKeys)
	require.Equal(t, []auth.Key{{Tenant: "ops", Secret: "root1", Admin: true}}, c.AdminKeys)
	require.Equal(t, registry.RateLimit{Requests: 50, Per: time.Second}, c.RateLimit)
	require.Equal(t, 5*time.Second, c.HTTPReadTimeout)
	require.Equal(t, 7, c.WSMaxPerTenant)
	require.Nil(t, c.TenantWeights, "unset: every tenant weighs 1")

	c, err = Parse(env(map[string]string{"CAO_ADMIN_KEYS": "root", "CAO_RATE_LIMIT": "600/m"}))
	require.NoError(t, err)
	require.NoError(t, c.CheckAuth(), "admin keys alone turn authentication on")
	require.Equal(t, registry.RateLimit{Requests: 600, Per: time.Minute}, c.RateLimit)
	require.Equal(t, DefaultHTTPReadTimeout, c.HTTPReadTimeout)

	for name, bad := range map[string]string{
		"CAO_API_KEYS": "bad tenant:k", "CAO_ADMIN_KEYS": "ops:", "CAO_RATE_LIMIT": "0/1s",
		"CAO_HTTP_READ_TIMEOUT": "1ns", "CAO_WS_MAX_PER_TENANT": "-1",
	} {
		_, err := Parse(env(map[string]string{name: bad}))
		require.ErrorContains(t, err, name)
		if name == "CAO_API_KEYS" || name == "CAO_ADMIN_KEYS" {
			require.NotContains(t, err.Error(), bad, "the error must not quote a key")
		}
	}
	for _, bad := range []string{"50", "x/1s", "50/1x", "50/0s", "50/48h"} {
		_, err := Parse(env(map[string]string{"CAO_RATE_LIMIT": bad}))
		require.ErrorContains(t, err, "CAO_RATE_LIMIT", bad)
	}
}

func TestWebhookSettings(t *testing.T) {
	t.Parallel()
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	c, err := Parse(env(map[string]string{"CAO_WEBHOOK_SECRET": secret, "CAO_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com,127.0.0.1:9000"}))
	require.NoError(t, err)
	require.Equal(t, secret, c.WebhookSecret)
	_, err = c.WebhookHosts.Check("https://hooks.example.com/x")
	require.NoError(t, err)

	_, err = Parse(env(map[string]string{"CAO_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com"}))
	require.ErrorContains(t, err, "CAO_WEBHOOK_SECRET", "allowed hosts without a secret")
	_, err = Parse(env(map[string]string{"CAO_WEBHOOK_SECRET": "not-a-secret-value"}))
	require.ErrorContains(t, err, "CAO_WEBHOOK_SECRET")
	require.NotContains(t, err.Error(), "not-a-secret-value", "the error never quotes the secret")
	_, err = Parse(env(map[string]string{"CAO_WEBHOOK_SECRET": secret, "CAO_WEBHOOK_ALLOWED_HOSTS": "a/b"}))
	require.ErrorContains(t, err, "CAO_WEBHOOK_ALLOWED_HOSTS")
}

func TestTenantWeights(t *testing.T) {
	t.Parallel()
	c, err := Parse(env(map[string]string{"CAO_TENANT_WEIGHTS": " acme=3, globex = 1 "}))
	require.NoError(t, err)
	require.Equal(t, map[string]int{"acme": 3, "globex": 1}, c.TenantWeights)
	for _, bad := range []string{"acme", "acme=0", "acme=1001", "acme=x", "bad tenant=2", "acme=1,acme=2", "=3"} {
		_, err := Parse(env(map[string]string{"CAO_TENANT_WEIGHTS": bad}))
		require.ErrorContains(t, err, "CAO_TENANT_WEIGHTS", bad)
	}
}

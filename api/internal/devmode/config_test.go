package devmode

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, addr, dataDir, reg string, keys int, authOff bool, lease time.Duration)
	}{
		{"dev defaults", nil, nil, func(t *testing.T, addr, dataDir, reg string, keys int, authOff bool, lease time.Duration) {
			require.Equal(t, "127.0.0.1:8000", addr)
			require.Equal(t, ".cao", dataDir)
			require.Equal(t, "deploy/registry.yaml", reg)
			require.Zero(t, keys)
			require.True(t, authOff)
			require.Equal(t, 5*time.Second, lease)
		}},
		{"environment wins over dev defaults",
			map[string]string{"CAO_HTTP_ADDR": ":9000", "CAO_DATA_DIR": "/var/cao", "CAO_API_KEYS": "a,b", "CAO_STEP_LEASE_TTL": "20s"}, nil,
			func(t *testing.T, addr, dataDir, reg string, keys int, authOff bool, lease time.Duration) {
				require.Equal(t, ":9000", addr)
				require.Equal(t, "/var/cao", dataDir)
				require.Equal(t, 2, keys, "keys are required when set, whatever CAO_AUTH says")
				require.Equal(t, 20*time.Second, lease)
			}},
		{"flags win over the environment",
			map[string]string{"CAO_HTTP_ADDR": ":9000", "CAO_REGISTRY": "env.yaml"},
			[]string{"--addr", "127.0.0.1:0", "--data-dir", "d", "--registry", "flag.yaml"},
			func(t *testing.T, addr, dataDir, reg string, keys int, authOff bool, lease time.Duration) {
				require.Equal(t, "127.0.0.1:0", addr)
				require.Equal(t, "d", dataDir)
				require.Equal(t, "flag.yaml", reg)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseFlags(tc.args, io.Discard)
			require.NoError(t, err)
			cfg, err := loadConfig(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }, o)
			require.NoError(t, err)
			tc.check(t, cfg.HTTPAddr, cfg.DataDir, cfg.RegistryPath, len(cfg.APIKeys), cfg.AuthOff, cfg.StepLeaseTTL)
		})
	}

	_, err := loadConfig(func(k string) (string, bool) { return "nope", k == "CAO_STEP_LEASE_TTL" }, options{})
	require.ErrorContains(t, err, "CAO_STEP_LEASE_TTL")
	_, err = parseFlags([]string{"--addr", "8000"}, io.Discard)
	require.ErrorContains(t, err, "--addr")
}

func TestWorkerQueues(t *testing.T) {
	t.Parallel()
	reg := &registry.Registry{Features: map[string]*registry.Feature{
		"f": {Steps: []*registry.Step{{Name: "a", Queue: "heavy"}, {Name: "b", Queue: "gpu"}}},
	}}
	configured := map[string]int{"heavy": 6, "default": 1}
	require.Equal(t, map[string]int{"heavy": 6, "default": 1, "gpu": 1}, workerQueues(configured, reg))
	require.Equal(t, map[string]int{"heavy": 6, "default": 1}, configured, "the configuration is not modified")
}

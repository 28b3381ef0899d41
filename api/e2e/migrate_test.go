package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/testinfra"
)

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	pg := testinfra.PostgresSchema(t)
	latest, err := migrate.Latest("postgres")
	require.NoError(t, err)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin.api, append([]string{"migrate"}, args...)...)
		cmd.Env = append(cmd.Environ(), "CAO_DATABASE_URL="+pg)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := run("version")
	require.NoError(t, err, out)
	require.Equal(t, "version 0", out)
	out, err = run("up")
	require.NoError(t, err, out)
	require.Contains(t, out, "version "+itoa(latest))
	out, err = run("up")
	require.NoError(t, err, "up twice is a no-op: %s", out)
	out, err = run("down", "1")
	require.NoError(t, err, out)
	require.Equal(t, "version "+itoa(latest-1), out)
	out, err = run("down", "x")
	require.Error(t, err)
	require.Contains(t, out, "not a positive number")
	out, err = run("sideways")
	require.Error(t, err)
	require.Contains(t, out, "unknown subcommand")

	cmd := exec.Command(bin.api, "migrate", "version")
	cmd.Env = append(cmd.Environ(), "CAO_DATABASE_URL=mysql://nope")
	b, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(b), "CAO_DATABASE_URL")
}

func itoa(n uint) string { return strconv.FormatUint(uint64(n), 10) }

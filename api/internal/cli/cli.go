// Package cli is cao-api's command-line client, `cao-api jobs start|get|list|watch|cancel|resume`,
// built on package client only, and `cao-api healthcheck`. The client subcommands read CAO_URL
// (default http://127.0.0.1:8000) and CAO_API_KEY. They print for people by default and one JSON
// document with --json (watch: one JSON message per line). Exit status: 0 on success (for
// `start --wait`, `resume --wait` and `watch`: the job COMPLETED), 1 when a followed job FAILED or
// was CANCELLED, 2 on a usage, connection or API error (the message on stderr).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cao-run/cao/pkg/client"
	"github.com/cao-run/cao/pkg/client/healthcheck"
)

// Exit statuses.
const (
	ExitOK     = 0 // success; a followed job COMPLETED
	ExitJobBad = 1 // a followed job FAILED or was CANCELLED
	ExitError  = 2 // usage, connection or API error
)

// DefaultURL is the API the client subcommands call when CAO_URL is unset.
const DefaultURL = "http://127.0.0.1:8000"

// IO is what a command reads and writes.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Lookup reads an environment variable (os.LookupEnv).
	Lookup func(string) (string, bool)
	// Terminal says Stdout is an interactive terminal: watch redraws its lines in place.
	Terminal bool
}

// Stdio is the process's standard streams and environment.
func Stdio() IO {
	return IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Lookup: os.LookupEnv, Terminal: isTerminal(os.Stdout)}
}

// isTerminal reports whether f is a character device (a terminal) and TERM allows redrawing.
func isTerminal(f *os.File) bool {
	if os.Getenv("TERM") == "dumb" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Handles reports whether cmd is one of this package's subcommands.
func Handles(cmd string) bool { return cmd == "jobs" || cmd == "healthcheck" }

// Main runs `cao-api jobs ...` or `cao-api healthcheck` (args start with the subcommand) and
// returns the exit status.
func Main(ctx context.Context, args []string, s IO) int {
	if s.Stdin == nil {
		s.Stdin = strings.NewReader("")
	}
	if s.Lookup == nil {
		s.Lookup = func(string) (string, bool) { return "", false }
	}
	if len(args) == 0 {
		fmt.Fprint(s.Stderr, jobsUsage)
		return ExitError
	}
	switch args[0] {
	case "healthcheck":
		return healthcheck.Main(ctx, healthcheck.API, args[1:], s.Stderr, s.Lookup)
	case "jobs":
		return jobs(ctx, args[1:], s)
	}
	fmt.Fprintf(s.Stderr, "cao-api: unknown command %q\n", args[0])
	return ExitError
}

const jobsUsage = `usage: cao-api jobs COMMAND [flags]

  start FEATURE [--input JSON|@FILE] [--idempotency-key K] [--webhook-url U] [--wait] [--json]
  get ID [--json]
  list [--status S] [--feature F] [--limit N] [--cursor C] [--tenant T] [--json]
  watch ID [--json]
  cancel ID [--json]
  resume ID [--from-step S] [--input JSON|@FILE] [--wait] [--json]

--input takes JSON, @FILE (a file holding JSON) or @- (standard input).
Environment: CAO_URL (default http://127.0.0.1:8000), CAO_API_KEY.
Exit status: 0 on success (with --wait and for watch: the job COMPLETED), 1 when the job FAILED or
was CANCELLED, 2 on a usage, connection or API error.
`

// cmd is one `jobs` subcommand being run.
type cmd struct {
	name string // "jobs start"
	io   IO
	fs   *flag.FlagSet
	json bool
}

func newCmd(name, usage string, s IO) *cmd {
	c := &cmd{name: "cao-api jobs " + name, io: s}
	c.fs = flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.fs.SetOutput(s.Stderr)
	c.fs.BoolVar(&c.json, "json", false, "print JSON for scripts instead of text")
	c.fs.Usage = func() {
		fmt.Fprintf(s.Stderr, "usage: cao-api jobs %s %s\n", name, usage)
		c.fs.PrintDefaults()
	}
	return c
}

// errUsage is a usage error already reported.
var errUsage = errors.New("usage")

// parse parses flags anywhere among the arguments and checks the number of positional ones.
func (c *cmd) parse(args []string, positional ...string) ([]string, error) {
	var pos []string
	for {
		if err := c.fs.Parse(args); err != nil {
			return nil, err
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) != len(positional) {
		want := "no arguments"
		if len(positional) > 0 {
			want = strings.Join(positional, " ")
		}
		fmt.Fprintf(c.io.Stderr, "%s: expected %s, got %q\n", c.name, want, pos)
		c.fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}

// usageStatus maps a parse error to the exit status (help is not an error).
func usageStatus(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitError
}

// client builds the API client from CAO_URL and CAO_API_KEY.
func (c *cmd) client() (*client.Client, error) {
	base := DefaultURL
	if v, ok := c.io.Lookup("CAO_URL"); ok && strings.TrimSpace(v) != "" {
		base = strings.TrimSpace(v)
	}
	key, _ := c.io.Lookup("CAO_API_KEY")
	cl, err := client.New(base, client.WithAPIKey(key))
	if err != nil {
		return nil, fmt.Errorf("CAO_URL: %w", err)
	}
	return cl, nil
}

// fail reports err on stderr and returns ExitError.
func (c *cmd) fail(err error) int {
	fmt.Fprintf(c.io.Stderr, "%s: %s\n", c.name, describe(err))
	var apiErr *client.APIError
	if errors.As(err, &apiErr) {
		for _, f := range apiErr.FieldErrors() {
			fmt.Fprintf(c.io.Stderr, "  %s: %s\n", f.Field, f.Message)
		}
		// feature_not_found and step_not_found list the names that exist.
		if d, ok := apiErr.Details.(map[string]any); ok {
			if valid, ok := d["valid"].([]any); ok {
				names := make([]string, 0, len(valid))
				for _, v := range valid {
					names = append(names, fmt.Sprint(v))
				}
				fmt.Fprintf(c.io.Stderr, "  valid: %s\n", strings.Join(names, ", "))
			}
		}
	}
	return ExitError
}

// describe says what went wrong in a line.
func describe(err error) string {
	var apiErr *client.APIError
	switch {
	case errors.As(err, &apiErr):
		return apiErr.Error()
	case errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return err.Error() + " (is CAO running at CAO_URL?)"
}

func jobs(ctx context.Context, args []string, s IO) int {
	if len(args) == 0 {
		fmt.Fprint(s.Stderr, jobsUsage)
		return ExitError
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "start":
		return start(ctx, rest, s)
	case "get":
		return get(ctx, rest, s)
	case "list":
		return list(ctx, rest, s)
	case "watch":
		return watch(ctx, rest, s)
	case "cancel":
		return cancel(ctx, rest, s)
	case "resume":
		return resume(ctx, rest, s)
	case "help", "-h", "--help":
		fmt.Fprint(s.Stdout, jobsUsage)
		return ExitOK
	}
	fmt.Fprintf(s.Stderr, "cao-api jobs: unknown command %q\n%s", sub, jobsUsage)
	return ExitError
}

// Command cao-api is CAO's API gateway. `cao-api` (or `serve`) runs the API against Postgres and
// Redis, `cao-api dev` runs the whole system in one process with embedded backends, and
// `cao-api migrate up|down N|version` manages the database schema. `cao-api jobs ...` is the
// command-line client of the API, and `cao-api healthcheck` asks a local API whether it is alive.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cao-run/cao/api/internal/cli"
	"github.com/cao-run/cao/api/internal/devmode"
	"github.com/cao-run/cao/api/internal/serve"
	"github.com/cao-run/cao/pkg/node"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && cli.Handles(os.Args[1]) {
		code := cli.Main(ctx, os.Args[1:], cli.Stdio())
		stop()
		os.Exit(code)
	}
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cao-api:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  cao-api [serve]                 run the API gateway against Postgres and Redis
  cao-api dev                     run everything in one process (embedded SQLite and Redis)
  cao-api migrate up              apply pending migrations
  cao-api migrate down N          roll back N migrations
  cao-api migrate version         print the schema version
  cao-api jobs COMMAND            the API from a terminal: start, get, list, watch, cancel, resume
                                  (cao-api jobs help; CAO_URL, CAO_API_KEY)
  cao-api healthcheck             exit 0 when the API on CAO_HTTP_ADDR answers /health, 1 otherwise`

func run(ctx context.Context, args []string) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		if len(args) > 0 {
			return fmt.Errorf("serve takes no arguments\n%s", usage)
		}
		node.TuneGC(os.LookupEnv)
		return serve.Run(ctx)
	case "dev":
		node.TuneGC(os.LookupEnv)
		return devmode.Run(ctx, args)
	case "migrate":
		return serve.Migrate(ctx, args, os.Stdout)
	case "help", "-h", "--help":
		fmt.Println(usage) //nolint:forbidigo // the usage text is the command's output
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", cmd, usage)
}

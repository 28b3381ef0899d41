package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/client"
	"github.com/cao-run/cao/pkg/client/clienttest"
	"github.com/cao-run/cao/pkg/client/healthcheck"
	"github.com/cao-run/cao/pkg/testinfra"
)

func TestMain(m *testing.M) { clienttest.Main(m) }

// result is what one command did.
type result struct {
	code           int
	stdout, stderr string
}

// term is a command runner with a fixed environment.
type term struct {
	t     *testing.T
	env   map[string]string
	stdin string
	tty   bool
}

func newTerm(t *testing.T, env ...string) *term {
	tm := &term{t: t, env: map[string]string{}}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		tm.env[k] = v
	}
	return tm
}

func (tm *term) run(args ...string) result {
	tm.t.Helper()
	var out, errb bytes.Buffer
	ctx := testinfra.Context(tm.t, 60*time.Second)
	code := Main(ctx, args, IO{
		Stdin: strings.NewReader(tm.stdin), Stdout: &out, Stderr: &errb, Terminal: tm.tty,
		Lookup: func(k string) (string, bool) { v, ok := tm.env[k]; return v, ok },
	})
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// ok runs a command that must succeed (exit 0).
func (tm *term) ok(args ...string) result {
	tm.t.Helper()
	r := tm.run(args...)
	require.Equal(tm.t, ExitOK, r.code, "%v\nstdout:\n%s\nstderr:\n%s", args, r.stdout, r.stderr)
	return r
}

func (tm *term) started(args ...string) client.Accepted {
	tm.t.Helper()
	r := tm.ok(append(args, "--json")...)
	var acc client.Accepted
	require.NoError(tm.t, json.Unmarshal([]byte(r.stdout), &acc), r.stdout)
	require.NoError(tm.t, uuid.Validate(acc.JobID))
	return acc
}

// jsonLines decodes watch --json output.
func jsonLines(t *testing.T, out string) []client.Message {
	t.Helper()
	var msgs []client.Message
	for line := range strings.Lines(out) {
		var m client.Message
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		msgs = append(msgs, m)
	}
	return msgs
}

func requireContiguous(t *testing.T, msgs []client.Message) {
	t.Helper()
	require.NotEmpty(t, msgs)
	require.Equal(t, client.MessageSnapshot, msgs[0].Type)
	for i := 1; i < len(msgs); i++ {
		require.Equal(t, msgs[i-1].Seq+1, msgs[i].Seq, "message %d", i)
	}
	require.True(t, msgs[len(msgs)-1].Terminal())
}

func closedURL(t *testing.T) (string, string) {
	t.Helper()
	addr := testinfra.RefusedAddr(t)
	return "http://" + addr, addr
}

func TestStartGetListWatch(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	tm := newTerm(t, "CAO_URL="+dev.URL)
	dir := t.TempDir()
	inFile := filepath.Join(dir, "input.json")
	require.NoError(t, os.WriteFile(inFile, []byte(`{"name": "Ada"}`+"\n"), 0o600))

	// start --input @file --json: one JSON document.
	acc := tm.started("jobs", "start", "greet", "--input", "@"+inFile)
	require.Equal(t, client.JobPending, acc.Status)
	require.Contains(t, acc.MonitorURL, "/ws/"+acc.JobID)

	// watch --json: one message per line, every seq once, exit 0 for COMPLETED.
	r := tm.ok("jobs", "watch", acc.JobID, "--json")
	msgs := jsonLines(t, r.stdout)
	requireContiguous(t, msgs)
	require.Equal(t, "COMPLETED", msgs[len(msgs)-1].Status)

	// get: tables; get --json: the job object.
	r = tm.ok("jobs", "get", acc.JobID)
	require.Regexp(t, `(?m)^Status\s+COMPLETED$`, r.stdout)
	require.Regexp(t, `(?m)^Feature\s+greet$`, r.stdout)
	require.Regexp(t, `(?m)^STEP\s+STATUS\s+ATTEMPTS\s+DURATION\s+SERVICE\s+QUEUE\s+NEEDS\s+ERROR$`, r.stdout)
	require.Regexp(t, `(?m)^hello\s+SUCCEEDED\s+1\s+(?:\d+ms|\d+\.\d\ds|\d+m\d+s)\s+fast\s+default\s*$`, r.stdout)
	require.Regexp(t, `(?m)^shout\s+SUCCEEDED\s+1\s+(?:\d+ms|\d+\.\d\ds|\d+m\d+s)\s+fast\s+default\s+hello\s*$`, r.stdout)
	require.Contains(t, r.stdout, `"loud": "hello Ada!"`)
	r = tm.ok("jobs", "get", acc.JobID, "--json")
	var job client.Job
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &job))
	require.Equal(t, client.JobCompleted, job.Status)
	require.JSONEq(t, `{"name":"Ada"}`, string(job.InputData))
	require.Len(t, job.Steps, 2)
	require.Equal(t, msgs[len(msgs)-1].Seq, job.LastSeq)

	// watch of an ended job: its state, exit 0.
	r = tm.ok("jobs", "watch", acc.JobID)
	require.Contains(t, r.stdout, "job "+acc.JobID+" (greet): COMPLETED")
	require.Contains(t, r.stdout, "Output")

	// start --wait (not a terminal): a line per change, then the output.
	r = tm.ok("jobs", "start", "greet", "--input", `{"name":"Bob"}`, "--wait")
	require.Regexp(t, `^job \S+ \(greet\) started: PENDING\n`, r.stdout)
	// hello may already run when the watch connects: then the snapshot shows it, without a time.
	require.Regexp(t, `(?m)^(\d\d:\d\d:\d\d\.\d{3})?\s+hello\s+RUNNING$`, r.stdout)
	require.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+hello\s+SUCCEEDED\s+(?:\d+ms|\d+\.\d\ds|\d+m\d+s)$`, r.stdout)
	require.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+job\s+COMPLETED in (?:\d+ms|\d+\.\d\ds|\d+m\d+s)$`, r.stdout)
	require.Contains(t, r.stdout, `"loud": "hello Bob!"`)
	require.Empty(t, r.stderr)

	// start --wait --json: the final job, one document.
	r = tm.ok("jobs", "start", "--wait", "--json", "greet", "--input", `{"name":"Cy"}`)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &job), r.stdout)
	require.Equal(t, client.JobCompleted, job.Status)
	require.JSONEq(t, `{"loud":"hello Cy!"}`, string(job.Step("shout").Output))

	// --input @- reads standard input; an Idempotency-Key makes a repeat answer the same job.
	tm.stdin = `{"name":"Di"}`
	first := tm.started("jobs", "start", "greet", "--input", "@-", "--idempotency-key", "di-1")
	tm.stdin = `{"name":"Di"}`
	r = tm.ok("jobs", "start", "greet", "--input", "@-", "--idempotency-key", "di-1")
	require.Contains(t, r.stdout, "job "+first.JobID+" (greet) already started (same Idempotency-Key)")
	tm.stdin = ""

	// On a terminal, watch redraws a block of lines in place.
	tm.tty = true
	r = tm.ok("jobs", "start", "slow", "--wait")
	tm.tty = false
	require.Contains(t, r.stdout, "\x1b[2K")
	require.Regexp(t, `\x1b\[\d+A`, r.stdout)
	require.Contains(t, r.stdout, "✓ s6")
	require.Contains(t, r.stdout, `"done": true`)

	// list: a table, pages of --limit with the command for the next page.
	r = tm.ok("jobs", "list", "--feature", "greet", "--limit", "2")
	require.Regexp(t, `(?m)^ID\s+FEATURE\s+STATUS\s+CREATED\s+DURATION\s+ERROR$`, r.stdout)
	rows := regexp.MustCompile(`(?m)^[0-9a-f-]{36}\s+greet\s+COMPLETED\s+\S+Z\s+(?:\d+ms|\d+\.\d\ds|\d+m\d+s)`).FindAllString(r.stdout, -1)
	require.Len(t, rows, 2, r.stdout)
	more := regexp.MustCompile(`(?m)^more: cao-api (jobs list --cursor \S+ --feature greet --limit 2)$`).FindStringSubmatch(r.stdout)
	require.NotNil(t, more, r.stdout)
	seen := map[string]bool{}
	for page := 0; ; page++ {
		require.Less(t, page, 10)
		for _, row := range regexp.MustCompile(`(?m)^[0-9a-f-]{36}`).FindAllString(r.stdout, -1) {
			require.False(t, seen[row], "listed twice: %s", row)
			seen[row] = true
		}
		m := regexp.MustCompile(`(?m)^more: cao-api (jobs list .*)$`).FindStringSubmatch(r.stdout)
		if m == nil {
			break
		}
		r = tm.ok(strings.Fields(m[1])...)
	}
	require.Len(t, seen, 4, "four greet jobs (the replayed start made none)")
	r = tm.ok("jobs", "list", "--json", "--status", "completed", "--feature", "slow")
	var page struct {
		Jobs       []client.Job `json:"jobs"`
		NextCursor *string      `json:"next_cursor"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &page), r.stdout)
	require.Len(t, page.Jobs, 1)
	require.Nil(t, page.NextCursor)
	require.Contains(t, r.stdout, `"next_cursor": null`)
	r = tm.ok("jobs", "list", "--feature", "nothing")
	require.Equal(t, "no jobs\n", r.stdout)
}

func TestFailedCancelledResumed(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	tm := newTerm(t, "CAO_URL="+dev.URL)
	ctx := testinfra.Context(t, 60*time.Second)
	c, err := client.New(dev.URL)
	require.NoError(t, err)

	// A job that fails: exit 1, and why.
	r := tm.run("jobs", "start", "broken", "--wait")
	require.Equal(t, ExitJobBad, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	require.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+fails\s+RETRYING\s+attempt 1\s+\S`, r.stdout)
	require.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+fails\s+FAILED\s+attempt 2\s+(?:\d+ms|\d+\.\d\ds|\d+m\d+s)\s+\S`, r.stdout)
	require.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+job\s+FAILED in (?:\d+ms|\d+\.\d\ds|\d+m\d+s)`, r.stdout)
	require.Contains(t, r.stdout, "step fails failed after 2 attempt(s): ")
	require.Empty(t, r.stderr)
	id := regexp.MustCompile(`^job (\S+) `).FindStringSubmatch(r.stdout)[1]
	r = tm.run("jobs", "watch", id, "--json")
	require.Equal(t, ExitJobBad, r.code)
	msgs := jsonLines(t, r.stdout)
	require.Len(t, msgs, 1)
	require.Equal(t, "FAILED", string(msgs[0].Job.Status))

	// Resume it from its first step with a new input: it runs (and fails) again.
	r = tm.ok("jobs", "resume", id, "--from-step", "ok", "--input", `{"try":2}`)
	require.Contains(t, r.stdout, "job "+id+" resumed: PENDING")
	r = tm.run("jobs", "watch", id)
	require.Equal(t, ExitJobBad, r.code, r.stdout)
	got, err := c.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 2, got.Step("ok").Run)
	require.JSONEq(t, `{"try":2}`, string(got.InputData))

	// Cancel a running job: watch exits 1; resume --wait completes it: 0.
	acc := tm.started("jobs", "start", "slow")
	testinfra.Eventually(t, 10*time.Second, func() bool {
		j, err := c.Get(ctx, acc.JobID)
		require.NoError(t, err)
		return j.Status == client.JobRunning
	}, "the slow job runs")
	r = tm.ok("jobs", "cancel", acc.JobID)
	require.Equal(t, "job "+acc.JobID+": CANCELLED\n", r.stdout)
	r = tm.run("jobs", "watch", acc.JobID)
	require.Equal(t, ExitJobBad, r.code)
	require.Contains(t, r.stdout, "job "+acc.JobID+" CANCELLED")
	r = tm.ok("jobs", "resume", acc.JobID, "--wait")
	require.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+job\s+COMPLETED in `, r.stdout)

	// What the API refuses: exit 2 with its answer on stderr.
	r = tm.run("jobs", "cancel", acc.JobID)
	require.Equal(t, ExitError, r.code)
	require.Contains(t, r.stderr, "cao-api jobs cancel: 409 job_already_terminal:")
	require.Empty(t, r.stdout)
	r = tm.run("jobs", "resume", acc.JobID, "--json")
	require.Equal(t, ExitError, r.code)
	require.Contains(t, r.stderr, "cao-api jobs resume: 409 job_not_resumable:")
	r = tm.ok("jobs", "cancel", tm.started("jobs", "start", "slow").JobID, "--json")
	var cancelled client.Accepted
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &cancelled))
	require.Equal(t, client.JobCancelled, cancelled.Status)
}

func TestUsageAndErrors(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	tm := newTerm(t, "CAO_URL="+dev.URL)
	unknown := uuid.NewString()

	usage := func(args []string, stderr string) {
		t.Helper()
		r := tm.run(args...)
		require.Equal(t, ExitError, r.code, "%v: %s", args, r.stderr)
		require.Contains(t, r.stderr, stderr, "%v", args)
		require.Empty(t, r.stdout, "%v", args)
	}
	usage(nil, "usage: cao-api jobs COMMAND")
	usage([]string{"jobs"}, "usage: cao-api jobs COMMAND")
	usage([]string{"jobs", "frobnicate"}, `unknown command "frobnicate"`)
	usage([]string{"jobs", "get"}, "cao-api jobs get: expected ID, got []")
	usage([]string{"jobs", "get", "a", "b"}, `expected ID, got ["a" "b"]`)
	usage([]string{"jobs", "list", "extra"}, "expected no arguments")
	usage([]string{"jobs", "start", "greet", "--bogus"}, "flag provided but not defined: -bogus")
	usage([]string{"jobs", "list", "--limit", "many"}, `invalid value "many" for flag -limit`)
	usage([]string{"jobs", "start", "greet", "--input", `{"name":`}, `--input {"name":: not valid JSON`)
	usage([]string{"jobs", "start", "greet", "--input", "@" + filepath.Join(t.TempDir(), "missing.json")}, "no such file")
	usage([]string{"jobs", "resume", unknown, "--input", "nope"}, "not valid JSON")

	// The API's errors: the answer on stderr, with the fields of invalid_input.
	usage([]string{"jobs", "start", "greet", "--input", `{}`}, "cao-api jobs start: 422 invalid_input: input_data does not match the feature's input schema\n  name: ")
	usage([]string{"jobs", "start", "nope"}, "404 feature_not_found")
	usage([]string{"jobs", "start", "nope"}, "\n  valid: broken, greet, slow\n")
	usage([]string{"jobs", "get", unknown}, "cao-api jobs get: 404 job_not_found: job not found")
	usage([]string{"jobs", "get", "not-a-uuid"}, "400 invalid_job_id")
	usage([]string{"jobs", "watch", unknown}, "cao-api jobs watch: 404 job_not_found")
	usage([]string{"jobs", "watch", unknown, "--json"}, "404 job_not_found")
	usage([]string{"jobs", "start", "greet", "--wait", "--input", `{}`}, "422 invalid_input")
	usage([]string{"jobs", "list", "--limit", "9999"}, "400 invalid_query")
	usage([]string{"jobs", "list", "--status", "done"}, "400 invalid_query")
	usage([]string{"jobs", "cancel", unknown}, "404 job_not_found")
	usage([]string{"jobs", "resume", unknown}, "404 job_not_found")

	// Help is not an error.
	r := tm.run("jobs", "get", "-h")
	require.Equal(t, ExitOK, r.code)
	require.Contains(t, r.stderr, "usage: cao-api jobs get ID [--json]")
	r = tm.ok("jobs", "help")
	require.Contains(t, r.stdout, "Exit status:")

	// No API there: exit 2 and say so.
	down, _ := closedURL(t)
	off := newTerm(t, "CAO_URL="+down)
	for _, args := range [][]string{{"jobs", "get", unknown}, {"jobs", "list"}, {"jobs", "start", "greet"}, {"jobs", "watch", unknown}} {
		r := off.run(args...)
		require.Equal(t, ExitError, r.code, "%v", args)
		require.Contains(t, r.stderr, "connection refused", "%v", args)
		require.Contains(t, r.stderr, "(is CAO running at CAO_URL?)", "%v", args)
	}
	r = newTerm(t, "CAO_URL=localhost:8000").run("jobs", "list")
	require.Equal(t, ExitError, r.code)
	require.Contains(t, r.stderr, "CAO_URL: client: base URL")
}

func TestAPIKey(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{Env: []string{"CAO_API_KEYS=acme:k-acme"}})

	r := newTerm(t, "CAO_URL="+dev.URL).run("jobs", "list")
	require.Equal(t, ExitError, r.code)
	require.Contains(t, r.stderr, "401 unauthorized")

	tm := newTerm(t, "CAO_URL="+dev.URL, "CAO_API_KEY=k-acme")
	r = tm.ok("jobs", "start", "greet", "--input", `{"name":"K"}`, "--wait", "--json")
	var job client.Job
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &job))
	require.Equal(t, "acme", job.Tenant)
	require.Equal(t, client.JobCompleted, job.Status)
	r = tm.ok("jobs", "list")
	require.Contains(t, r.stdout, job.ID)
}

func TestHealthcheck(t *testing.T) {
	dev := clienttest.Start(t, clienttest.Options{})
	_, downAddr := closedURL(t)

	r := newTerm(t, "CAO_HTTP_ADDR="+dev.Addr).run("healthcheck")
	require.Equal(t, 0, r.code, r.stderr)
	require.Empty(t, r.stdout)
	r = newTerm(t, "CAO_HTTP_ADDR="+downAddr).run("healthcheck")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "cao-api healthcheck: no answer:")
	r = newTerm(t, "CAO_HTTP_ADDR="+dev.Addr).run("healthcheck", "now")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "takes no arguments")
	r = newTerm(t, "CAO_HTTP_ADDR=:0").run("healthcheck")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "no fixed port")

	// The worker's check: CAO_METRICS_ADDR (whose /health answers as the API's does) is required.
	worker := func(env ...string) (int, string) {
		var errb bytes.Buffer
		lookup := func(k string) (string, bool) {
			for _, kv := range env {
				if name, v, _ := strings.Cut(kv, "="); name == k {
					return v, true
				}
			}
			return "", false
		}
		return healthcheck.Main(context.Background(), healthcheck.Worker, nil, &errb, lookup), errb.String()
	}
	code, stderr := worker()
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "cao-worker healthcheck: CAO_METRICS_ADDR is not set")
	code, stderr = worker("CAO_METRICS_ADDR=" + dev.Addr)
	require.Equal(t, 0, code, stderr)
	code, stderr = worker("CAO_METRICS_ADDR=" + downAddr)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "connection refused")
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cao-run/cao/pkg/client"
)

// readInput reads an --input value: JSON, @FILE or @- (standard input).
func readInput(v string, stdin io.Reader) (json.RawMessage, error) {
	var b []byte
	switch {
	case v == "@-":
		var err error
		if b, err = io.ReadAll(stdin); err != nil {
			return nil, fmt.Errorf("--input @-: %w", err)
		}
	case strings.HasPrefix(v, "@"):
		var err error
		if b, err = os.ReadFile(v[1:]); err != nil {
			return nil, fmt.Errorf("--input: %w", err)
		}
	default:
		b = []byte(v)
	}
	raw := json.RawMessage(strings.TrimSpace(string(b)))
	if !json.Valid(raw) {
		return nil, fmt.Errorf("--input %s: not valid JSON", shorten(v, 60))
	}
	return raw, nil
}

// writeTable prints rows in aligned columns, without trailing spaces.
func writeTable(w io.Writer, rows [][]string) {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	for line := range strings.Lines(b.String()) {
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
}

// writeJSON prints v as one indented JSON document.
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func start(ctx context.Context, args []string, s IO) int {
	c := newCmd("start", "FEATURE [--input JSON|@FILE] [--idempotency-key K] [--webhook-url U] [--wait] [--json]", s)
	input := c.fs.String("input", "", "the job's input_data: JSON, @FILE or @- (standard input)")
	key := c.fs.String("idempotency-key", "", "Idempotency-Key: repeating the command with the same key answers the same job")
	webhook := c.fs.String("webhook-url", "", "URL to POST the job to when it ends (its host must be in CAO_WEBHOOK_ALLOWED_HOSTS)")
	wait := c.fs.Bool("wait", false, "follow the job live until it ends; exit 0 if it COMPLETED, 1 if it FAILED or was CANCELLED")
	pos, err := c.parse(args, "FEATURE")
	if err != nil {
		return usageStatus(err)
	}
	req := client.StartRequest{Feature: pos[0], IdempotencyKey: *key, WebhookURL: *webhook}
	if *input != "" {
		raw, err := readInput(*input, s.Stdin)
		if err != nil {
			fmt.Fprintf(s.Stderr, "%s: %v\n", c.name, err)
			return ExitError
		}
		req.Input = raw
	}
	cl, err := c.client()
	if err != nil {
		return c.fail(err)
	}
	acc, err := cl.Start(ctx, req)
	if err != nil {
		return c.fail(err)
	}
	if !*wait {
		if c.json {
			writeJSON(s.Stdout, acc)
			return ExitOK
		}
		printAccepted(s.Stdout, "started", pos[0], acc)
		return ExitOK
	}
	if !c.json {
		printAccepted(s.Stdout, "started", pos[0], acc)
	}
	return c.follow(ctx, cl, acc.JobID)
}

// printAccepted says what Start or Resume answered.
func printAccepted(w io.Writer, verb, feature string, a *client.Accepted) {
	what := "job " + a.JobID
	if feature != "" {
		what += " (" + feature + ")"
	}
	if a.Replayed {
		verb = "already " + verb + " (same Idempotency-Key)"
	}
	fmt.Fprintf(w, "%s %s: %s\n", what, verb, a.Status)
	if a.MonitorURL != "" {
		fmt.Fprintf(w, "  monitor  %s\n", a.MonitorURL)
	}
	if a.UIURL != "" {
		fmt.Fprintf(w, "  ui       %s\n", a.UIURL)
	}
}

func get(ctx context.Context, args []string, s IO) int {
	c := newCmd("get", "ID [--json]", s)
	pos, err := c.parse(args, "ID")
	if err != nil {
		return usageStatus(err)
	}
	cl, err := c.client()
	if err != nil {
		return c.fail(err)
	}
	job, err := cl.Get(ctx, pos[0])
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		writeJSON(s.Stdout, job)
		return ExitOK
	}
	printJob(s.Stdout, job)
	return ExitOK
}

// printJob shows a job and its steps as tables.
func printJob(w io.Writer, j *client.Job) {
	var rows [][]string
	row := func(k, v string) { rows = append(rows, []string{k, v}) }
	row("Job", j.ID)
	row("Feature", j.FeatureName)
	row("Tenant", j.Tenant)
	status := string(j.Status)
	if j.Stuck {
		status += " (stuck: " + j.StuckReason + ")"
	}
	row("Status", status)
	row("Created", stamp(&j.CreatedAt))
	if j.StartedAt != nil {
		row("Started", stamp(j.StartedAt))
	}
	if j.FinishedAt != nil {
		fin := stamp(j.FinishedAt)
		if j.StartedAt != nil {
			fin += " (" + fmtDur(j.FinishedAt.Sub(*j.StartedAt)) + ")"
		}
		row("Finished", fin)
	}
	if j.Error != "" {
		row("Error", j.Error)
	}
	writeTable(w, rows)
	if len(j.Steps) > 0 {
		fmt.Fprintln(w)
		rows := [][]string{{"STEP", "STATUS", "ATTEMPTS", "DURATION", "SERVICE", "QUEUE", "NEEDS", "ERROR"}}
		for _, st := range j.Steps {
			rows = append(rows, []string{st.Name, string(st.Status), strconv.Itoa(st.Attempts), stepDur(&st, time.Time{}),
				st.Service, st.Queue, strings.Join(st.Needs, ","), shorten(st.Error, 80)})
		}
		writeTable(w, rows)
	}
	if out := compactJSON(j.Output); out != "" {
		fmt.Fprintf(w, "\nOutput\n%s\n", indentJSON(j.Output))
	}
}

func list(ctx context.Context, args []string, s IO) int {
	c := newCmd("list", "[--status S] [--feature F] [--limit N] [--cursor C] [--tenant T] [--json]", s)
	status := c.fs.String("status", "", "only jobs in this status (PENDING RUNNING COMPLETED FAILED CANCELLED)")
	feature := c.fs.String("feature", "", "only jobs of this feature")
	limit := c.fs.Int("limit", 0, "jobs per page, 1 to 500 (default 50)")
	cursor := c.fs.String("cursor", "", "the next page, as printed after the previous one")
	tenant := c.fs.String("tenant", "", "only this tenant's jobs (admin keys)")
	if _, err := c.parse(args); err != nil {
		return usageStatus(err)
	}
	cl, err := c.client()
	if err != nil {
		return c.fail(err)
	}
	page, err := cl.List(ctx, client.ListOptions{
		Status: client.JobStatus(strings.ToUpper(*status)), Feature: *feature, Limit: *limit, Cursor: *cursor, Tenant: *tenant,
	})
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		writeJSON(s.Stdout, struct {
			Jobs       []client.Job `json:"jobs"`
			NextCursor *string      `json:"next_cursor"`
		}{page.Jobs, nilIfEmpty(page.NextCursor)})
		return ExitOK
	}
	if len(page.Jobs) == 0 {
		fmt.Fprintln(s.Stdout, "no jobs")
		return ExitOK
	}
	rows := [][]string{{"ID", "FEATURE", "STATUS", "CREATED", "DURATION", "ERROR"}}
	for _, j := range page.Jobs {
		dur := ""
		if j.StartedAt != nil && j.FinishedAt != nil {
			dur = fmtDur(j.FinishedAt.Sub(*j.StartedAt))
		}
		rows = append(rows, []string{j.ID, j.FeatureName, string(j.Status), stamp(&j.CreatedAt), dur, shorten(j.Error, 60)})
	}
	writeTable(s.Stdout, rows)
	if page.NextCursor != "" {
		fmt.Fprintf(s.Stdout, "\nmore: cao-api jobs list --cursor %s", page.NextCursor)
		for _, f := range [][2]string{{"status", *status}, {"feature", *feature}, {"tenant", *tenant}} {
			if f[1] != "" {
				fmt.Fprintf(s.Stdout, " --%s %s", f[0], f[1])
			}
		}
		if *limit != 0 {
			fmt.Fprintf(s.Stdout, " --limit %d", *limit)
		}
		fmt.Fprintln(s.Stdout)
	}
	return ExitOK
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func watch(ctx context.Context, args []string, s IO) int {
	c := newCmd("watch", "ID [--json]", s)
	pos, err := c.parse(args, "ID")
	if err != nil {
		return usageStatus(err)
	}
	cl, err := c.client()
	if err != nil {
		return c.fail(err)
	}
	return c.follow(ctx, cl, pos[0])
}

func cancel(ctx context.Context, args []string, s IO) int {
	c := newCmd("cancel", "ID [--json]", s)
	pos, err := c.parse(args, "ID")
	if err != nil {
		return usageStatus(err)
	}
	cl, err := c.client()
	if err != nil {
		return c.fail(err)
	}
	acc, err := cl.Cancel(ctx, pos[0])
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		writeJSON(s.Stdout, acc)
		return ExitOK
	}
	fmt.Fprintf(s.Stdout, "job %s: %s\n", acc.JobID, acc.Status)
	return ExitOK
}

func resume(ctx context.Context, args []string, s IO) int {
	c := newCmd("resume", "ID [--from-step S] [--input JSON|@FILE] [--wait] [--json]", s)
	from := c.fs.String("from-step", "", "re-run this step and every step after it, even those that succeeded")
	input := c.fs.String("input", "", "replace the job's input_data: JSON, @FILE or @- (standard input)")
	wait := c.fs.Bool("wait", false, "follow the job live until it ends; exit 0 if it COMPLETED, 1 if it FAILED or was CANCELLED")
	pos, err := c.parse(args, "ID")
	if err != nil {
		return usageStatus(err)
	}
	req := client.ResumeRequest{FromStep: *from}
	if *input != "" {
		raw, err := readInput(*input, s.Stdin)
		if err != nil {
			fmt.Fprintf(s.Stderr, "%s: %v\n", c.name, err)
			return ExitError
		}
		req.Input = raw
	}
	cl, err := c.client()
	if err != nil {
		return c.fail(err)
	}
	acc, err := cl.Resume(ctx, pos[0], req)
	if err != nil {
		return c.fail(err)
	}
	if !*wait {
		if c.json {
			writeJSON(s.Stdout, acc)
			return ExitOK
		}
		printAccepted(s.Stdout, "resumed", "", acc)
		return ExitOK
	}
	if !c.json {
		printAccepted(s.Stdout, "resumed", "", acc)
	}
	return c.follow(ctx, cl, acc.JobID)
}

// follow watches a job until it ends and returns the exit status for it: with --json, watch prints
// each message on a line and start/resume --wait print the final job; otherwise the steps are shown
// changing state.
func (c *cmd) follow(ctx context.Context, cl *client.Client, id string) int {
	lines := c.json && strings.HasPrefix(c.name, "cao-api jobs watch")
	var r *renderer
	if !c.json {
		r = newRenderer(c.io.Stdout, c.io.Terminal)
	}
	enc := json.NewEncoder(c.io.Stdout)
	enc.SetEscapeHTML(false)
	var ended client.JobStatus
	job, err := cl.Watch(ctx, id, func(m client.Message) error {
		if m.Terminal() {
			ended = client.JobStatus(m.Status)
			if m.Type == client.MessageSnapshot {
				ended = m.Job.Status
			}
		}
		switch {
		case lines:
			return enc.Encode(m)
		case r != nil:
			r.message(m)
		}
		return nil
	})
	if err != nil {
		return c.fail(err)
	}
	switch {
	case c.json && !lines:
		writeJSON(c.io.Stdout, job)
	case r != nil:
		r.done(job)
	}
	// The job as read after its terminal event; if it was resumed in between, the event decides.
	status := job.Status
	if !status.Terminal() {
		status = ended
	}
	if status == client.JobCompleted {
		return ExitOK
	}
	return ExitJobBad
}

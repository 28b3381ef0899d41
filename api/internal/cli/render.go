package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cao-run/cao/pkg/client"
)

// renderer shows a watched job for people: on a terminal, a block of lines (the job, then one per
// step) redrawn in place at every change; elsewhere one line per change.
type renderer struct {
	w     io.Writer
	tty   bool
	job   client.Job
	drawn int // lines of the block drawn last (terminal)
	width int // step name column
	now   func() time.Time
}

func newRenderer(w io.Writer, tty bool) *renderer {
	return &renderer{w: w, tty: tty, now: time.Now}
}

var icons = map[client.StepStatus]string{
	client.StepPending: "·", client.StepQueued: "○", client.StepRunning: "▶", client.StepRetrying: "↻",
	client.StepSucceeded: "✓", client.StepFailed: "✗", client.StepSkipped: "-", client.StepCancelled: "⊘",
}

func (r *renderer) message(m client.Message) {
	r.job.Apply(m)
	for _, s := range r.job.Steps {
		r.width = max(r.width, len(s.Name), len("job"))
	}
	if r.tty {
		r.redraw()
		return
	}
	switch m.Type {
	case client.MessageSnapshot:
		fmt.Fprintf(r.w, "job %s (%s): %s\n", r.job.ID, r.job.FeatureName, r.job.Status)
		for _, s := range r.job.Steps {
			if s.Status != client.StepPending {
				fmt.Fprintf(r.w, "%12s  %-*s  %s\n", "", r.width, s.Name, stepDetail(&s, time.Time{}))
			}
		}
	case client.MessageStep:
		s := r.job.Step(m.Step)
		detail := stepDetail(s, time.Time{})
		if m.Error != "" && !strings.Contains(detail, m.Error) {
			detail += "  " + shorten(m.Error, 200)
		}
		fmt.Fprintf(r.w, "%s  %-*s  %s\n", clock(m.At), r.width, m.Step, detail)
	case client.MessageJob:
		line := string(r.job.Status)
		if r.job.Status.Terminal() && r.job.StartedAt != nil && r.job.FinishedAt != nil {
			line += " in " + fmtDur(r.job.FinishedAt.Sub(*r.job.StartedAt))
		}
		if m.Error != "" {
			line += "  " + shorten(m.Error, 200)
		}
		fmt.Fprintf(r.w, "%s  %-*s  %s\n", clock(m.At), r.width, "job", line)
	}
}

// redraw replaces the block drawn last with the job's current state.
func (r *renderer) redraw() {
	var b strings.Builder
	if r.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", r.drawn)
	}
	lines := r.block()
	for _, l := range lines {
		b.WriteString("\r\x1b[2K")
		b.WriteString(l)
		b.WriteString("\n")
	}
	r.drawn = len(lines)
	_, _ = io.WriteString(r.w, b.String())
}

// block is the terminal view: the job, then its steps.
func (r *renderer) block() []string {
	j := &r.job
	head := fmt.Sprintf("job %s (%s)  %s", j.ID, j.FeatureName, j.Status)
	if j.StartedAt != nil {
		end := r.now()
		if j.FinishedAt != nil {
			end = *j.FinishedAt
		}
		head += "  " + fmtDur(end.Sub(*j.StartedAt))
	}
	lines := []string{head}
	for i := range j.Steps {
		s := &j.Steps[i]
		icon := icons[s.Status]
		if icon == "" {
			icon = "?"
		}
		lines = append(lines, fmt.Sprintf("  %s %-*s  %s", icon, r.width, s.Name, stepDetail(s, r.now())))
	}
	return lines
}

// done shows the job as read after it ended: the final block or line, then its output or errors.
func (r *renderer) done(j *client.Job) {
	r.job = *j
	if r.tty {
		r.redraw()
	}
	switch j.Status {
	case client.JobCompleted:
		if compactJSON(j.Output) != "" {
			fmt.Fprintf(r.w, "\nOutput\n%s\n", indentJSON(j.Output))
		}
	default:
		fmt.Fprintf(r.w, "\njob %s %s", j.ID, j.Status)
		if j.Error != "" {
			fmt.Fprintf(r.w, ": %s", j.Error)
		}
		fmt.Fprintln(r.w)
		for _, s := range j.Steps {
			if s.Status == client.StepFailed {
				fmt.Fprintf(r.w, "  step %s failed after %d attempt(s): %s\n", s.Name, s.Attempts, s.Error)
			}
		}
	}
}

// stepDetail is a step's status with its attempt, duration and error.
func stepDetail(s *client.Step, now time.Time) string {
	out := fmt.Sprintf("%-9s", s.Status)
	if s.Attempts > 1 || s.Status == client.StepRetrying {
		out += fmt.Sprintf("  attempt %d", s.Attempts)
	}
	if d := stepDur(s, now); d != "" {
		out += "  " + d
	}
	if s.Error != "" && (s.Status == client.StepFailed || s.Status == client.StepRetrying) {
		out += "  " + shorten(s.Error, 120)
	}
	return strings.TrimRight(out, " ")
}

// stepDur is how long a step ran, or has been running at now (empty when unknown).
func stepDur(s *client.Step, now time.Time) string {
	if s.StartedAt == nil {
		return ""
	}
	switch {
	case s.FinishedAt != nil:
		return fmtDur(s.FinishedAt.Sub(*s.StartedAt))
	case !now.IsZero():
		return fmtDur(now.Sub(*s.StartedAt)) + "…"
	}
	return ""
}

// fmtDur prints a duration for people: 12ms, 1.52s, 3m4s.
func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "0ms"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// clock is the local time of day of an event.
func clock(t time.Time) string {
	if t.IsZero() {
		return strings.Repeat(" ", 12)
	}
	return t.Local().Format("15:04:05.000")
}

// stamp prints a time in RFC 3339 (UTC, as the API does).
func stamp(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// shorten cuts s to n runes.
func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// compactJSON is raw without spaces, or empty for null or nothing.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if len(raw) == 0 || json.Compact(&b, raw) != nil || b.String() == "null" {
		return ""
	}
	return b.String()
}

// indentJSON is raw indented for reading.
func indentJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Indent(&b, raw, "", "  ") != nil {
		return string(raw)
	}
	return b.String()
}

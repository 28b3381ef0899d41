package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/testinfra"
	"github.com/cao-run/cao/pkg/testinfra/teststore"
)

const logRegistry = `
services:
  sim:
    kind: mock
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 20ms}
features:
  solo:
    steps:
      - {name: a, service: sim}
  pair:
    steps:
      - {name: a, service: sim}
      - {name: b, service: sim}
`

// conflictCounter counts the changes Apply refused because the job moved on (lost compare-and-sets).
type conflictCounter struct {
	store.Store
	conflicts atomic.Int32
}

func (c *conflictCounter) Apply(ctx context.Context, ch *store.Change) error {
	err := c.Store.Apply(ctx, ch)
	if errors.Is(err, store.ErrConflict) {
		c.conflicts.Add(1)
	}
	return err
}

type logBundle struct {
	*bundle
	logs     *testinfra.LogBuffer
	st       *conflictCounter
	finished chan store.Job // OnJobFinished calls
}

// setupLogged is setup with the orchestrator's logs (DEBUG and up, JSON) going to a buffer and its
// OnJobFinished hook recording every call.
func setupLogged(t *testing.T, backend string) *logBundle {
	t.Helper()
	reg, err := registry.Parse("log.yaml", []byte(logRegistry), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	var st store.Store
	if backend == "sqlite" {
		st = teststore.SQLite(t)
	} else {
		st, _ = teststore.Postgres(t)
	}
	cc := &conflictCounter{Store: st}
	logs := &testinfra.LogBuffer{}
	finished := make(chan store.Job, 16)
	clk := &clock{t: time.Now().UTC()}
	o := orchestrator.New(cc, reg, nil, nil, orchestrator.Config{
		Now: clk.Now, Rand: func() float64 { return 0.5 },
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Hooks:  orchestrator.Hooks{OnJobFinished: func(j store.Job) { finished <- j }},
	})
	return &logBundle{bundle: &bundle{orch: o, store: st, clock: clk}, logs: logs, st: cc, finished: finished}
}

// line is the part of a log record the lifecycle tests compare.
type line struct {
	Level, Msg, Step, Status string
	Attempt                  float64
}

func TestLifecycleLogLines(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			b := setupLogged(t, backend)
			ctx := context.Background()
			v, _, err := b.orch.CreateJob(ctx, orchestrator.CreateRequest{Tenant: "acme", Feature: "solo"})
			require.NoError(t, err)
			jobID := v.Job.ID

			// Attempt 1 fails with a retryable HTTP 503, attempt 2 succeeds.
			p := b.drain(t)
			require.Len(t, p, 1)
			a := b.start(t, p[0], "w1")
			require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{
				Err: errors.New("service sim answered HTTP 503"), Retryable: true, ErrorClass: "http_status", HTTPStatus: 503,
			}))
			p = b.drain(t)
			require.Len(t, p, 1)
			require.Equal(t, 2, p[0].Attempt)
			a = b.start(t, p[0], "w2")
			require.NoError(t, b.orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok":true}`), HTTPStatus: 200}))

			recs := b.logs.Records(t)
			var got []line
			for _, r := range recs {
				l := line{Level: r["level"].(string), Msg: r["msg"].(string), Status: r["status"].(string)}
				if s, ok := r["step"].(string); ok {
					l.Step, l.Attempt = s, r["attempt"].(float64)
				}
				got = append(got, l)
			}
			require.Equal(t, []line{
				{Level: "INFO", Msg: "job created", Status: "PENDING"},
				{Level: "DEBUG", Msg: "step queued", Step: "a", Status: "QUEUED"},
				{Level: "INFO", Msg: "step started", Step: "a", Status: "RUNNING", Attempt: 1},
				{Level: "INFO", Msg: "job started", Status: "RUNNING"},
				{Level: "INFO", Msg: "step retrying", Step: "a", Status: "RETRYING", Attempt: 1},
				{Level: "INFO", Msg: "step started", Step: "a", Status: "RUNNING", Attempt: 2},
				{Level: "INFO", Msg: "step succeeded", Step: "a", Status: "SUCCEEDED", Attempt: 2},
				{Level: "INFO", Msg: "job finished", Status: "COMPLETED"},
			}, got)

			// Every line names the job, its tenant and feature, and the event it reports (seq as in the
			// event log); step lines name the step's service, run and attempt.
			evs, err := b.orch.Events(ctx, store.AllTenants, jobID, 0, 0)
			require.NoError(t, err)
			require.Len(t, evs, len(recs), "one line per committed event")
			for i, r := range recs {
				require.Equal(t, jobID, r["job_id"], r)
				require.Equal(t, "acme", r["tenant"], r)
				require.Equal(t, "solo", r["feature"], r)
				require.InDelta(t, float64(evs[i].Seq), r["seq"], 0, r)
				require.Equal(t, evs[i].Status, r["status"], r)
				if r["step"] != nil {
					require.Equal(t, "sim", r["service"], r)
					require.InDelta(t, 1, r["run"], 0, r)
				}
			}
			retry := recs[4]
			require.Equal(t, "http_status", retry["error_class"])
			require.InDelta(t, 503, retry["http_status"], 0)
			require.Equal(t, "service sim answered HTTP 503", retry["error"])
			require.Equal(t, "retry in 5ms", retry["reason"]) // full jitter of 10ms, Rand 0.5
			require.Equal(t, "w1", retry["worker"])
			require.Contains(t, retry, "duration_ms")
			require.Equal(t, "w2", recs[5]["worker"])
			ok := recs[6]
			require.InDelta(t, 200, ok["http_status"], 0)
			require.NotContains(t, ok, "error_class")
			require.Contains(t, recs[7], "duration_ms")

			// The job's ending reached the hook once, as the change left it.
			j := <-b.finished
			require.Equal(t, jobID, j.ID)
			require.Equal(t, store.JobCompleted, j.Status)
			require.NotNil(t, j.FinishedAt)
			require.Empty(t, b.finished)
		})
	}
}

func TestLogAndHooksOncePerCommittedChange(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			b := setupLogged(t, backend)
			ctx := context.Background()
			v, _, err := b.orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "pair"})
			require.NoError(t, err)
			tasks := b.drain(t)
			require.Len(t, tasks, 2)
			first := b.start(t, tasks[0], "w1")
			second := b.start(t, tasks[1], "w2") // moves the job on: first's snapshot is stale

			require.NoError(t, b.orch.FinishAttempt(ctx, first, orchestrator.Outcome{Output: json.RawMessage(`1`)}))
			require.Positive(t, b.st.conflicts.Load(), "the first finish computed its change from a stale state and lost")
			require.NoError(t, b.orch.FinishAttempt(ctx, second, orchestrator.Outcome{Output: json.RawMessage(`2`)}))

			count := map[string]int{}
			for _, r := range b.logs.Records(t) {
				key := r["msg"].(string)
				if s, ok := r["step"].(string); ok {
					key += " " + s
				}
				count[key]++
			}
			require.Equal(t, map[string]int{
				"job created": 1, "step queued a": 1, "step queued b": 1, "step started a": 1, "step started b": 1,
				"job started": 1, "step succeeded a": 1, "step succeeded b": 1, "job finished": 1,
			}, count)
			require.Equal(t, v.Job.ID, (<-b.finished).ID)

			// A resumed job that ends again is reported again; a refused change reports nothing.
			_, err = b.orch.Cancel(ctx, store.AllTenants, v.Job.ID)
			require.ErrorIs(t, err, orchestrator.ErrAlreadyTerminal)
			require.Empty(t, b.finished)
			v2, _, err := b.orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "solo"})
			require.NoError(t, err)
			_, err = b.orch.Cancel(ctx, store.AllTenants, v2.Job.ID)
			require.NoError(t, err)
			j := <-b.finished
			require.Equal(t, store.JobCancelled, j.Status)
			_, err = b.orch.Resume(ctx, store.AllTenants, v2.Job.ID, orchestrator.ResumeRequest{})
			require.NoError(t, err)
			_, err = b.orch.Cancel(ctx, store.AllTenants, v2.Job.ID)
			require.NoError(t, err)
			j = <-b.finished
			require.Equal(t, store.JobCancelled, j.Status)
			require.Empty(t, b.finished)

			// Normal events are never WARN or ERROR.
			for _, r := range b.logs.Records(t) {
				require.Contains(t, []string{"DEBUG", "INFO"}, r["level"], r)
			}
		})
	}
}

package orchestrator_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/dispatch"
	"github.com/cao-run/cao/pkg/migrate"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/store/sqlstore"
	"github.com/cao-run/cao/pkg/task"
	"github.com/cao-run/cao/pkg/testinfra"
)

const chainRegistry = `
services: {sim: {kind: mock}}
features:
  chain5:
    steps:
      - {name: s1, service: sim}
      - {name: s2, service: sim, needs: [s1]}
      - {name: s3, service: sim, needs: [s2]}
      - {name: s4, service: sim, needs: [s3]}
      - {name: s5, service: sim, needs: [s4]}
  fan2:
    steps:
      - {name: a, service: sim}
      - {name: b, service: sim}
`

// maxRoundTripsPerStep is the hot path's budget on Postgres: claiming a step, recording its outcome
// and dispatching the next step, with the outbox clean-up amortised. Today: 2 to claim (read, then
// one compare-and-set statement), 1 to record (the claim's result is the starting point), and the
// batched outbox delete.
const maxRoundTripsPerStep = 4.0

// TestRoundTripsPerStep counts, at the wire, the Postgres round trips a 5-step job costs from the
// claim of its first step to its completion, and fails above the budget.
func TestRoundTripsPerStep(t *testing.T) {
	t.Parallel()
	ctx, orch, rt, outboxEmpty := roundTripSetup(t)

	run := func() {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "chain5", Input: json.RawMessage(`{"n": 1}`)})
		require.NoError(t, err)
		for _, name := range []string{"s1", "s2", "s3", "s4", "s5"} {
			p := task.StepPayload{JobID: v.Job.ID, Feature: "chain5", Step: name, Run: 1, Attempt: 1}
			tg, err := orch.Resolve(ctx, p)
			require.NoError(t, err)
			a, err := orch.StartAttempt(ctx, tg, "w1")
			require.NoError(t, err)
			require.NoError(t, orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok": true}`)}))
		}
		got, err := orch.GetJob(ctx, store.AllTenants, v.Job.ID)
		require.NoError(t, err)
		require.Equal(t, "COMPLETED", string(got.Job.Status))
	}
	// The GetJob of each run is the test's own check, not part of the hot path: 3 round trips each.
	perStep := roundTripsPerStep(rt, outboxEmpty, run, 3)
	t.Logf("Postgres round trips per step, claim to completion with dispatch and job creation amortised: %.2f", perStep)
	require.LessOrEqual(t, perStep, maxRoundTripsPerStep)

	// Creating a job is one statement (its outbox row's delete comes later, batched). The fewest of
	// three tries, so that a stray ping of the pool cannot fail it.
	fewest := int64(1 << 30)
	for range 3 {
		before := rt.Count()
		_, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "chain5", Input: json.RawMessage(`{}`)})
		require.NoError(t, err)
		fewest = min(fewest, rt.Count()-before)
	}
	require.EqualValues(t, 1, fewest, "round trips of CreateJob")
}

// roundTripsPerStep runs one 5-step job to warm up (pooled connections, prepared statements, the
// relay's first pass), then four more, and returns the round trips per step they cost, outbox
// clean-up included, less checkTrips per job spent on the test's own checks.
func roundTripsPerStep(rt *testinfra.RoundTrips, outboxEmpty, run func(), checkTrips int64) float64 {
	run()
	outboxEmpty()
	const jobs = 4
	before := rt.Count()
	for range jobs {
		run()
	}
	outboxEmpty()
	return float64(rt.Count()-before-checkTrips*jobs) / (jobs * 5)
}

// roundTripSetup opens a Postgres store through a round-trip counter, with a started relay as the
// dispatcher, and returns an orchestrator over them and a function that waits until every dispatched
// task's outbox row is deleted (checked on an uncounted connection).
func roundTripSetup(t *testing.T) (context.Context, *orchestrator.Orchestrator, *testinfra.RoundTrips, func()) {
	t.Helper()
	return roundTripSetupVia(t, nil)
}

// roundTripSetupVia is roundTripSetup with the relay's Dispatch seen through via, when not nil.
func roundTripSetupVia(t *testing.T, via func(orchestrator.Dispatcher) orchestrator.Dispatcher) (context.Context, *orchestrator.Orchestrator, *testinfra.RoundTrips, func()) {
	t.Helper()
	ctx := testinfra.Context(t, 2*time.Minute)
	url := testinfra.PostgresSchema(t)
	require.NoError(t, migrate.Up(ctx, "postgres", url))
	rt, proxied := testinfra.CountRoundTrips(t, url)
	// One connection, kept busy: database/sql pings a pooled connection that sat idle for a second
	// before reusing it, which would count as a round trip of whatever runs next.
	st, err := sqlstore.OpenPostgres(ctx, proxied, sqlstore.Config{MaxOpenConns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	direct, err := sqlstore.OpenPostgres(ctx, url, sqlstore.Config{MaxOpenConns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = direct.Close() })
	rdb := testinfra.Redis(t)
	relay := dispatch.NewRelay(st, rdb.Client, asynq.NewClientFromRedisClient(rdb.Client), dispatch.RelayConfig{PollInterval: time.Hour})
	require.NoError(t, relay.Start(ctx))
	t.Cleanup(func() { _ = relay.Stop(context.Background()) })
	reg, err := registry.Parse("chain.yaml", []byte(chainRegistry), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	outboxEmpty := func() {
		testinfra.Eventually(t, 10*time.Second, func() bool {
			n, err := direct.CountOutbox(ctx)
			return err == nil && n == 0
		}, "dispatched tasks' outbox rows deleted")
	}
	var d orchestrator.Dispatcher = relay
	if via != nil {
		d = via(relay)
	}
	return ctx, orchestrator.New(st, reg, nil, d, orchestrator.Config{}), rt, outboxEmpty
}

// BenchmarkChainJob runs 5-step jobs through the orchestrator on Postgres as a worker would (claim,
// record, dispatch of the next step into Asynq), one step at a time: the hot path without the queue's
// own latency. Run with -cpuprofile to see where a step's CPU goes.
func BenchmarkChainJob(b *testing.B) {
	ctx := context.Background()
	url := testinfra.PostgresSchema(b)
	require.NoError(b, migrate.Up(ctx, "postgres", url))
	st, err := sqlstore.OpenPostgres(ctx, url, sqlstore.Config{})
	require.NoError(b, err)
	b.Cleanup(func() { _ = st.Close() })
	rdb := testinfra.Redis(b)
	relay := dispatch.NewRelay(st, rdb.Client, asynq.NewClientFromRedisClient(rdb.Client), dispatch.RelayConfig{PollInterval: time.Hour})
	require.NoError(b, relay.Start(ctx))
	b.Cleanup(func() { _ = relay.Stop(context.Background()) })
	reg, err := registry.Parse("chain.yaml", []byte(chainRegistry), func(string) (string, bool) { return "", false })
	require.NoError(b, err)
	orch := orchestrator.New(st, reg, nil, relay, orchestrator.Config{})
	b.ResetTimer()
	for b.Loop() {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "chain5", Input: json.RawMessage(`{"n": 1}`)})
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range []string{"s1", "s2", "s3", "s4", "s5"} {
			p := task.StepPayload{JobID: v.Job.ID, Feature: "chain5", Step: name, Run: 1, Attempt: 1}
			tg, err := orch.Resolve(ctx, p)
			if err != nil {
				b.Fatal(err)
			}
			a, err := orch.StartAttempt(ctx, tg, "w1")
			if err != nil {
				b.Fatal(err)
			}
			if err := orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok": true}`)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*5)/b.Elapsed().Seconds(), "steps/s")
}

// TestRoundTripsPerStepContinued is TestRoundTripsPerStep for a worker that runs each next step of
// the chain itself (FinishAndContinue): one statement records a step and claims the next. The first
// step is claimed from the task the create handed to the queue, which carries the job (carry.go).
func TestRoundTripsPerStepContinued(t *testing.T) {
	t.Parallel()
	ctx, orch, rt, outboxEmpty, rec := recordingSetup(t)
	always := func(*registry.Step, *registry.Service) bool { return true }

	run := func() {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "chain5", Input: json.RawMessage(`{"n": 1}`)})
		require.NoError(t, err)
		tg, err := orch.Resolve(ctx, rec.payload(t, v.Job.ID, "s1"))
		require.NoError(t, err)
		a, err := orch.StartAttempt(ctx, tg, "w1")
		require.NoError(t, err)
		steps := 1
		for a != nil {
			a, _, err = orch.FinishAndContinue(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok": true}`)}, always)
			require.NoError(t, err)
			if a != nil {
				steps++
			}
		}
		require.Equal(t, 5, steps)
	}
	perStep := roundTripsPerStep(rt, outboxEmpty, run, 0)
	t.Logf("Postgres round trips per step when each step continues the previous one: %.2f", perStep)
	// Per job: create (1), claim the first step (1), one statement per step after that (5), and the
	// first task's outbox row deleted in a batch.
	require.LessOrEqual(t, perStep, 1.6)
}

// TestStartAttemptFromSnapshot checks the claim of a step whose job was read while it waited for a
// slot (Read, StartAttemptFrom): one statement when the job is as read; when the job moved on since
// (here: cancelled), the claim is refused by the job's version and the step is found stale, never
// started from the old read.
func TestStartAttemptFromSnapshot(t *testing.T) {
	t.Parallel()
	ctx, orch, rt, outboxEmpty := roundTripSetup(t)
	target := func() *orchestrator.Target {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "chain5", Input: json.RawMessage(`{"n": 1}`)})
		require.NoError(t, err)
		tg, err := orch.Resolve(ctx, task.StepPayload{JobID: v.Job.ID, Feature: "chain5", Step: "s1", Run: 1, Attempt: 1})
		require.NoError(t, err)
		return tg
	}

	// Warm the pool and the statement cache, then count: the claim from a snapshot is one statement.
	for i := range 2 {
		tg := target()
		// The relay deletes dispatched tasks' outbox rows over the same connection, in its own time:
		// let it finish first, so that none of its round trips counts as the claim's. The read
		// after it keeps the connection fresh (an idle one is pinged before reuse).
		outboxEmpty()
		snap, err := orch.Read(ctx, tg)
		require.NoError(t, err)
		before := rt.Count()
		a, err := orch.StartAttemptFrom(ctx, tg, "w1", orchestrator.Claim{From: snap})
		require.NoError(t, err)
		if i == 1 {
			require.EqualValues(t, 1, rt.Count()-before, "round trips of a claim from a quiet snapshot")
		}
		require.Equal(t, json.RawMessage(`{"n": 1}`), a.Input)
		require.NoError(t, orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok": true}`)}))
	}

	// The job was cancelled after the read: the claim is refused, the step stays CANCELLED.
	tg := target()
	snap, err := orch.Read(ctx, tg)
	require.NoError(t, err)
	_, err = orch.Cancel(ctx, store.AllTenants, tg.Payload.JobID)
	require.NoError(t, err)
	_, err = orch.StartAttemptFrom(ctx, tg, "w1", orchestrator.Claim{From: snap})
	require.ErrorIs(t, err, orchestrator.ErrStale)
	got, err := orch.GetJob(ctx, store.AllTenants, tg.Payload.JobID)
	require.NoError(t, err)
	require.Equal(t, store.JobCancelled, got.Job.Status)
	for _, s := range got.Steps {
		require.NotEqual(t, store.StepRunning, s.Status, "step %s", s.Name)
	}

	// A duplicate delivery of a task whose step another worker claimed after the read: stale.
	tg = target()
	snap, err = orch.Read(ctx, tg)
	require.NoError(t, err)
	a, err := orch.StartAttempt(ctx, tg, "w2")
	require.NoError(t, err)
	_, err = orch.StartAttemptFrom(ctx, tg, "w1", orchestrator.Claim{From: snap})
	require.ErrorIs(t, err, orchestrator.ErrStale)
	require.NoError(t, orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{"ok": true}`)}))
}

// TestAttemptEndsWhenAnswered: an outcome recorded after its answer came (the worker gave its slot
// back in between) ends the attempt and the step at the answer, never before the attempt started
// nor after the record.
func TestAttemptEndsWhenAnswered(t *testing.T) {
	t.Parallel()
	ctx, orch, _, _ := roundTripSetup(t)
	run := func(at func(started time.Time) time.Time) (started, finished, attemptEnd time.Time) {
		v, _, err := orch.CreateJob(ctx, orchestrator.CreateRequest{Feature: "chain5", Input: json.RawMessage(`{}`)})
		require.NoError(t, err)
		tg, err := orch.Resolve(ctx, task.StepPayload{JobID: v.Job.ID, Feature: "chain5", Step: "s1", Run: 1, Attempt: 1})
		require.NoError(t, err)
		a, err := orch.StartAttempt(ctx, tg, "w1")
		require.NoError(t, err)
		require.NoError(t, orch.FinishAttempt(ctx, a, orchestrator.Outcome{Output: json.RawMessage(`{}`), At: at(a.StartedAt)}))
		got, err := orch.GetJob(ctx, store.AllTenants, v.Job.ID)
		require.NoError(t, err)
		require.Len(t, got.Attempts, 1)
		return *got.Steps[0].StartedAt, *got.Steps[0].FinishedAt, *got.Attempts[0].FinishedAt
	}
	// Answered 1 ms after the start, recorded later: the step ends at the answer.
	started, finished, attemptEnd := run(func(s time.Time) time.Time { return s.Add(time.Millisecond) })
	require.Equal(t, started.Add(time.Millisecond), finished)
	require.Equal(t, finished, attemptEnd)
	// A time before the start (another clock) is the start; one after the record is the record.
	started, finished, _ = run(func(s time.Time) time.Time { return s.Add(-time.Hour) })
	require.Equal(t, started, finished)
	before := time.Now()
	_, finished, _ = run(func(s time.Time) time.Time { return s.Add(time.Hour) })
	require.False(t, finished.Before(before.Truncate(time.Microsecond)))
	require.True(t, finished.Before(time.Now().Add(time.Minute)), "not in the future")
}

package orchestrator

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// fillEveryField sets every field of the struct v points to a value that is not its zero value and
// that differs from field to field, so that a round trip that drops or swaps a field shows.
func fillEveryField(t *testing.T, v any, seed int) {
	t.Helper()
	rv := reflect.ValueOf(v).Elem()
	base := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for i := range rv.NumField() {
		f, name, n := rv.Field(i), rv.Type().Field(i).Name, seed*100+i+1
		switch f.Interface().(type) {
		case json.RawMessage:
			f.Set(reflect.ValueOf(json.RawMessage(fmt.Sprintf(`{"field":%q}`, name))))
		case time.Time:
			f.Set(reflect.ValueOf(base.Add(time.Duration(n) * time.Microsecond)))
		case *time.Time:
			at := base.Add(time.Duration(n) * time.Millisecond)
			f.Set(reflect.ValueOf(&at))
		case []string:
			f.Set(reflect.ValueOf([]string{name, "other"}))
		default:
			switch f.Kind() {
			case reflect.String:
				f.SetString(fmt.Sprintf("%s-%d", name, n))
			case reflect.Int, reflect.Int64:
				f.SetInt(int64(n))
			default:
				t.Fatalf("fillEveryField: no value for %s (%s): teach the test, and carry.go, this field", name, f.Type())
			}
		}
	}
}

// TestCarriedSnapshotKeepsEveryField: a snapshot carried by a task decodes to exactly the snapshot
// encoded, every field of the job and of its steps included. A field added to store.Job or
// store.Step fails this test until carry.go carries it.
func TestCarriedSnapshotKeepsEveryField(t *testing.T) {
	t.Parallel()
	var job store.Job
	fillEveryField(t, &job, 0)
	steps := make([]store.Step, 2)
	for i := range steps {
		fillEveryField(t, &steps[i], i+1)
		steps[i].JobID = job.ID
	}
	enc := encodeCarried(&snapshot{job: job, steps: steps})
	got, ok := decodeCarried(enc, job.ID)
	require.True(t, ok)
	require.Equal(t, job, got.job)
	require.Equal(t, steps, got.steps)

	// A JSON string: the task's payload, which carries it as a member, stays a JSON object.
	var str string
	require.NoError(t, json.Unmarshal(enc, &str))
	p, err := task.ParseStepPayload(task.WithSnap(task.StepPayload{JobID: job.ID, Step: "a", Run: 1, Attempt: 1}.Marshal(), enc))
	require.NoError(t, err)
	require.Equal(t, enc, p.Snap)

	// Unset optional fields stay unset (a step without output has none, rather than JSON null).
	bare := snapshot{
		job:   store.Job{ID: "j", Status: store.JobPending, Input: json.RawMessage(`{}`), Version: 1},
		steps: []store.Step{{JobID: "j", Name: "a", Needs: []string{}, Status: store.StepQueued, Run: 1}},
	}
	got, ok = decodeCarried(encodeCarried(&bare), "j")
	require.True(t, ok)
	require.Equal(t, bare.job, got.job)
	require.Equal(t, bare.steps, got.steps)

	// A step without needs decodes with an empty list, as a read gives it.
	bare.steps[0].Needs = nil
	got, ok = decodeCarried(encodeCarried(&bare), "j")
	require.True(t, ok)
	require.Equal(t, []string{}, got.steps[0].Needs)
}

// TestCarriedSnapshotStrings: every string and raw value decodes back byte for byte, those JSON
// would escape or could not carry included, and so do times outside RFC 3339's years.
func TestCarriedSnapshotStrings(t *testing.T) {
	t.Parallel()
	odd := "quote \" \\ back, <tag> & amp, tab\t nl\n cr\r nul\x00 bell\a del\x7f, é ü 漢字 🙂, \u2028, bad \xff byte"
	far := time.Date(10000, 1, 1, 0, 0, 0, 1, time.UTC)
	early := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Hour)
	job := store.Job{ID: "j", Status: store.JobFailed, Error: odd, StuckReason: odd, Input: json.RawMessage(`{"s":"\u00e9\n"}`),
		Output: json.RawMessage(`not JSON at all`), Version: 3, CreatedAt: far, StuckAt: &early}
	steps := []store.Step{{JobID: "j", Name: odd, Needs: []string{odd, ""}, Status: store.StepFailed, Run: 1, Error: odd,
		Output: json.RawMessage{}}}
	got, ok := decodeCarried(encodeCarried(&snapshot{job: job, steps: steps}), "j")
	require.True(t, ok)
	require.Equal(t, job, got.job)
	require.Equal(t, steps, got.steps)
}

// TestCarriedSnapshotRefusals: a worker uses a carried snapshot only when it is one of its own
// format, of the task's job, whole; anything else makes it read the job.
func TestCarriedSnapshotRefusals(t *testing.T) {
	t.Parallel()
	sn := &snapshot{job: store.Job{ID: "j", Input: json.RawMessage(`{}`)}, steps: []store.Step{{JobID: "j", Name: "a", Needs: []string{}}}}
	enc := encodeCarried(sn)
	_, ok := decodeCarried(enc, "j")
	require.True(t, ok)

	raw := func(b []byte) json.RawMessage {
		return json.RawMessage(`"` + base64.StdEncoding.EncodeToString(b) + `"`)
	}
	var fields []byte
	require.NoError(t, json.Unmarshal(enc, &fields)) // a JSON string of base64 decodes to []byte
	newer := slices.Clone(fields)
	newer[0] = carriedFormat + 1

	for name, b := range map[string]json.RawMessage{
		"none":             nil,
		"another job":      enc,
		"another format":   raw(newer),
		"format 1 (JSON)":  json.RawMessage(`{"v":1,"job":{"id":"j","input":{}},"steps":[]}`),
		"not base64":       json.RawMessage(`"not base64!"`),
		"not a string":     json.RawMessage(`[1, 2]`),
		"cut short":        raw(fields[:len(fields)-3]),
		"with bytes after": raw(append(slices.Clone(fields), 0)),
		"empty":            raw(nil),
	} {
		id := "j"
		if name == "another job" {
			id = "k"
		}
		_, ok := decodeCarried(b, id)
		require.False(t, ok, name)
	}
	// Every prefix of a snapshot is refused, never read past its end.
	for n := range len(fields) {
		_, ok := decodeCarried(raw(fields[:n]), "j")
		require.False(t, ok, "the first %d bytes", n)
	}
}

// TestCarryLeavesTheOutboxPlain: the tasks handed to the queue carry the snapshot (beside their
// payload, which dispatch joins when it enqueues them); the outbox's copies, which the relay sends
// after a crash, do not.
func TestCarryLeavesTheOutboxPlain(t *testing.T) {
	t.Parallel()
	o := &Orchestrator{cfg: Config{}.WithDefaults()}
	job := store.Job{ID: "j", FeatureName: "f", Status: store.JobPending, Input: json.RawMessage(`{}`), Version: 1}
	steps := []*store.Step{
		{JobID: "j", Name: "a", Needs: []string{}, Status: store.StepQueued, Run: 1},
		{JobID: "j", Name: "b", Needs: []string{"a"}, Status: store.StepPending, Run: 1},
	}
	u := &unit{o: o, job: &job, steps: steps}
	u.outbox = append(u.outbox, task.ForStep(steps[0], "f", "t", time.Now()))
	plain := slices.Clone(u.outbox[0].Payload)

	tasks := o.carry(u)
	require.Equal(t, plain, u.outbox[0].Payload, "the outbox's copy is unchanged")
	require.Empty(t, u.outbox[0].Carried)
	require.Equal(t, plain, tasks[0].Payload, "the queue's copy is otherwise the same task")
	sn, ok := decodeCarried(tasks[0].Carried, "j")
	require.True(t, ok, "the queue's copy carries the job")
	require.Equal(t, job, sn.job)
}

// BenchmarkCarriedSnapshot: what a job's first step costs the API (encode) and its worker (parse
// the task's payload, decode the snapshot), for a 5-step job.
func BenchmarkCarriedSnapshot(b *testing.B) {
	now := time.Now().UTC()
	job := store.Job{ID: "0193b0c2-7f00-7000-8000-000000000001", Tenant: "default", FeatureName: "chain5", Status: store.JobPending,
		Input: json.RawMessage(`{"name": "bench", "n": 12345}`), InputVersion: 1, Version: 1, CreatedAt: now, UpdatedAt: now}
	var steps []store.Step
	for i, name := range []string{"s1", "s2", "s3", "s4", "s5"} {
		st := store.Step{JobID: job.ID, Name: name, Position: i, Service: "mock", Queue: "default", Needs: []string{},
			Status: store.StepPending, Run: 1, CreatedAt: now, UpdatedAt: now}
		if i > 0 {
			st.Needs = []string{steps[i-1].Name}
		} else {
			st.Status = store.StepQueued
		}
		steps = append(steps, st)
	}
	sn := &snapshot{job: job, steps: steps}
	plain := task.StepPayload{JobID: job.ID, Feature: "chain5", Step: "s1", Run: 1, Attempt: 1, Tenant: "default"}.Marshal()
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			_ = task.WithSnap(plain, encodeCarried(sn))
		}
	})
	payload := task.WithSnap(plain, encodeCarried(sn))
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			p, err := task.ParseStepPayload(payload)
			if err != nil {
				b.Fatal(err)
			}
			if _, ok := decodeCarried(p.Snap, p.JobID); !ok {
				b.Fatal("not decoded")
			}
		}
	})
}

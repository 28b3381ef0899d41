package orchestrator

import (
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
	enc, err := encodeCarried(&snapshot{job: job, steps: steps})
	require.NoError(t, err)
	got, ok := decodeCarried(enc, job.ID)
	require.True(t, ok)
	require.Equal(t, job, got.job)
	require.Equal(t, steps, got.steps)

	// Byte for byte what encoding/json writes for the same snapshot.
	want := carriedSnapshot{Format: carriedFormat, Job: carriedJob(job)}
	for _, s := range steps {
		want.Steps = append(want.Steps, carriedStep(s))
	}
	marshalled, err := json.Marshal(want)
	require.NoError(t, err)
	require.Equal(t, string(marshalled), string(enc))

	// Unset optional fields stay unset (a step without output has none, rather than JSON null).
	bare := snapshot{
		job:   store.Job{ID: "j", Status: store.JobPending, Input: json.RawMessage(`{}`), Version: 1},
		steps: []store.Step{{JobID: "j", Name: "a", Needs: []string{}, Status: store.StepQueued, Run: 1}},
	}
	enc, err = encodeCarried(&bare)
	require.NoError(t, err)
	got, ok = decodeCarried(enc, "j")
	require.True(t, ok)
	require.Equal(t, bare.job, got.job)
	require.Equal(t, bare.steps, got.steps)
}

// TestCarriedSnapshotStrings: strings that JSON must escape decode back exactly; what would not
// decode back exactly (a string that is not UTF-8, a raw value that is not JSON) is not carried.
func TestCarriedSnapshotStrings(t *testing.T) {
	t.Parallel()
	odd := "quote \" \\ back, <tag> & amp, tab\t nl\n cr\r nul\x00 bell\a del\x7f, é ü 漢字 🙂, \u2028"
	job := store.Job{ID: "j", Status: store.JobFailed, Error: odd, StuckReason: odd, Input: json.RawMessage(`{"s":"\u00e9\n"}`), Version: 3}
	steps := []store.Step{{JobID: "j", Name: "a", Needs: []string{odd, ""}, Status: store.StepFailed, Run: 1, Error: odd}}
	enc, err := encodeCarried(&snapshot{job: job, steps: steps})
	require.NoError(t, err)
	got, ok := decodeCarried(enc, "j")
	require.True(t, ok)
	require.Equal(t, job, got.job)
	require.Equal(t, steps, got.steps)

	for name, sn := range map[string]snapshot{
		"error not UTF-8":   {job: store.Job{ID: "j", Input: json.RawMessage(`{}`), Error: "bad \xff byte"}},
		"need not UTF-8":    {job: store.Job{ID: "j", Input: json.RawMessage(`{}`)}, steps: []store.Step{{Needs: []string{"\xc3"}}}},
		"input not JSON":    {job: store.Job{ID: "j", Input: json.RawMessage(`{"a":`)}},
		"output not JSON":   {job: store.Job{ID: "j", Input: json.RawMessage(`{}`)}, steps: []store.Step{{Output: json.RawMessage(`nope`)}}},
		"year out of range": {job: store.Job{ID: "j", Input: json.RawMessage(`{}`), CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
	} {
		_, err := encodeCarried(&sn)
		require.ErrorIs(t, err, errNotJSON, name)
	}
}

// TestCarriedSnapshotRefusals: a worker uses a carried snapshot only when it is one of its own
// format, of the task's job; anything else makes it read the job.
func TestCarriedSnapshotRefusals(t *testing.T) {
	t.Parallel()
	enc, err := encodeCarried(&snapshot{job: store.Job{ID: "j", Input: json.RawMessage(`{}`)}})
	require.NoError(t, err)
	_, ok := decodeCarried(enc, "j")
	require.True(t, ok)

	var other map[string]any
	require.NoError(t, json.Unmarshal(enc, &other))
	other["v"] = carriedFormat + 1
	newer, err := json.Marshal(other)
	require.NoError(t, err)

	for name, b := range map[string]json.RawMessage{
		"none":           nil,
		"another job":    enc,
		"another format": newer,
		"not json":       json.RawMessage(`{"v":`),
		"not an object":  json.RawMessage(`[1, 2]`),
	} {
		id := "j"
		if name == "another job" {
			id = "k"
		}
		_, ok := decodeCarried(b, id)
		require.False(t, ok, name)
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

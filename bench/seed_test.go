package main

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

func TestOrderByDeps(t *testing.T) {
	// As on Postgres since migration 000007: the event log and the attempts reference nothing.
	tables := []string{"job_events", "job_inputs", "job_steps", "jobs", "step_attempts"}
	deps := map[string][]string{"job_steps": {"jobs"}, "job_inputs": {"jobs"}}
	order, err := orderByDeps(tables, deps)
	require.NoError(t, err)
	require.Equal(t, []string{"job_events", "jobs", "job_inputs", "job_steps", "step_attempts"}, order)

	_, err = orderByDeps([]string{"a", "b"}, map[string][]string{"a": {"b"}, "b": {"a"}})
	require.ErrorContains(t, err, "cycle")
}

func TestTemplateHasJob(t *testing.T) {
	tpl := &template{tables: []templateTable{{name: "job_events", rows: [][]any{{1}, {2}}}, {name: "jobs", rows: [][]any{{1}}}}}
	require.True(t, tpl.hasJob(), "the jobs row need not come first")
	tpl.tables = tpl.tables[:1]
	require.False(t, tpl.hasJob())
}

func TestUUIDV7At(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 123e6, time.UTC)
	u := uuidV7At(at)
	require.Equal(t, uuid.Version(7), u.Version())
	require.Equal(t, uuid.RFC4122, u.Variant())
	sec, nsec := u.Time().UnixTime()
	require.Equal(t, at.UnixMilli(), sec*1000+nsec/1e6, "the id holds its time")
	require.Less(t, uuidV7At(at).String(), uuidV7At(at.Add(time.Millisecond)).String(), "later ids sort after")
}

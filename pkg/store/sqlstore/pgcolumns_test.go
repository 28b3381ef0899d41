package sqlstore

import (
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/require"
)

func TestRowSetNumbersItsParameters(t *testing.T) {
	type row struct {
		id  string
		at  *time.Time
		run int
	}
	set := pgRowSet[row]{
		pgCol("id", "uuid", func(r *row) string { return r.id }),
		pgCol("at", "timestamptz", func(r *row) *time.Time { return r.at }),
		pgCol("run", "int", func(r *row) int { return r.run }),
	}
	p := &pgParams{n: 2}
	require.Equal(t, "unnest($3::text[]::uuid[], $4::timestamptz[], $5::int[]) AS x(id, at, run)", set.from("x", p))
	require.Equal(t, "unnest($6::text[]::uuid[], $7::timestamptz[], $8::int[]) AS y(id, at, run)", set.from("y", p))

	now := time.Now()
	args := set.args([]any{"first"}, []row{{"a", &now, 1}, {"b", nil, 2}})
	require.Equal(t, []any{"first", pgtype.FlatArray[string]{"a", "b"}, pgtype.FlatArray[*time.Time]{&now, nil}, pgtype.FlatArray[int]{1, 2}}, args)
	// No rows: empty arrays (unnest reads no rows), never NULL.
	empty := set.args(nil, nil)
	require.Equal(t, []any{pgtype.FlatArray[string]{}, pgtype.FlatArray[*time.Time]{}, pgtype.FlatArray[int]{}}, empty)
	for _, a := range empty {
		require.NotNil(t, a.(pgtype.ArrayGetter).Dimensions(), "an empty array, not NULL")
	}
}

// Every row set's parameters are as many as its statement's placeholders, for each statement.
func TestStatementsTakeTheirArguments(t *testing.T) {
	for _, c := range []struct {
		name string
		sql  string
		n    int
	}{
		{"update", pgApplyUpdate, pgUpdateScalars + len(pgStepUpdateRows) + tailColumns()},
		{"update with webhooks", pgApplyUpdateWebhooks, pgUpdateScalars + len(pgStepUpdateRows) + tailColumns() + len(pgWebhookRows)},
		{"create", pgApplyCreate, pgCreateScalars + len(pgStepCreateRows) + tailColumns()},
		{"group update", pgGroupUpdate, len(pgJobUpdateRows) + len(pgStepUpdateRows) + tailColumns()},
		{"group create", pgGroupCreate, len(pgJobCreateRows) + len(pgStepCreateRows) + tailColumns()},
	} {
		require.Contains(t, c.sql, "$"+strconv.Itoa(c.n)+"::", c.name)
		require.NotContains(t, c.sql, "$"+strconv.Itoa(c.n+1), c.name)
	}
}

func tailColumns() int {
	return len(pgAttemptRows) + len(pgInputRows) + len(pgEventRows) + len(pgOutboxRows)
}

func TestUUIDParameterIsBinary(t *testing.T) {
	id := "7b3c8c9e-0000-4000-8000-000000000001"
	m := pgtype.NewMap()
	_, err := m.Encode(pgtype.UUIDOID, pgtype.BinaryFormatCode, id, nil)
	require.Error(t, err, "pgx cannot send a string as a binary uuid (if it can now, pgUUID and param may go)")
	buf, err := m.Encode(pgtype.UUIDOID, pgtype.BinaryFormatCode, pgUUID(id), nil)
	require.NoError(t, err)
	require.Len(t, buf, 16)
	_, err = m.Encode(pgtype.TextArrayOID, pgtype.BinaryFormatCode, []string{id}, nil)
	require.NoError(t, err, "a uuid column goes as text[]")
	require.Equal(t, "nope", pgUUID("nope"))
}

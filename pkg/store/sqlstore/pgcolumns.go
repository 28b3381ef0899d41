package sqlstore

import (
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// The hot statements receive their rows (steps, attempts, events, ...) as one array parameter per
// column, and read them back as rows with unnest. pgx sends the arrays in binary, so the server
// parses no text for them: as JSON arrays read by json_to_recordset, the rows cost Postgres about a
// quarter of its CPU on the hot path in lexing and converting their fields (session 9).

// pgColumn is one column of a row set: its name in the statement, the SQL type of one value (the
// parameter is an array of it), and how the column's values are taken from the rows, as one slice
// that pgx encodes as that array.
type pgColumn[R any] struct {
	name, typ string
	values    func(rows []R) any
}

// pgCol is the column name of SQL type typ whose value in a row is get(row). The values go to pgx
// as a pgtype.FlatArray, which it encodes as it is: a plain slice of a type it has no case for
// (*string, *time.Time, int, bool, []byte) it would walk by reflection, value by value.
func pgCol[R, V any](name, typ string, get func(*R) V) pgColumn[R] {
	return pgColumn[R]{name: name, typ: typ, values: func(rows []R) any {
		out := make(pgtype.FlatArray[V], len(rows))
		for i := range rows {
			out[i] = get(&rows[i])
		}
		return out
	}}
}

// param is the type of the column's parameter, cast to c.typ[] where pgx cannot send it in binary:
// a Go string goes as text[] and becomes uuid[] on the server. (Asked for a uuid[] of strings, pgx
// fails to encode it in binary, builds an error, plans again and sends the array as text, on every
// call: a tenth of a worker's CPU.)
func (c pgColumn[R]) param() string {
	if c.typ == "uuid" {
		return "text[]::uuid[]"
	}
	return c.typ + "[]"
}

// pgUUID is a canonical id as a uuid parameter that pgx sends in binary: a Go string it sends only
// as text, after failing to encode it in binary on every call (as for the columns above).
func pgUUID(id string) any {
	u, err := uuid.Parse(id)
	if err != nil {
		return id // not an id: the server refuses it
	}
	return [16]byte(u)
}

// pgRowSet is the columns of a row set, in the order of their parameters.
type pgRowSet[R any] []pgColumn[R]

// from is the row source of a statement that reads the row set as alias: "unnest($n::typ[], ...) AS
// alias(name, ...)", its parameters numbered from p's next one on.
func (s pgRowSet[R]) from(alias string, p *pgParams) string {
	var params, names strings.Builder
	for i, c := range s {
		if i > 0 {
			params.WriteString(", ")
			names.WriteString(", ")
		}
		params.WriteString("$" + strconv.Itoa(p.next()) + "::" + c.param())
		names.WriteString(c.name)
	}
	return "unnest(" + params.String() + ") AS " + alias + "(" + names.String() + ")"
}

// args appends the row set's parameters (one array per column, in the order of from's) to args.
func (s pgRowSet[R]) args(args []any, rows []R) []any {
	for _, c := range s {
		args = append(args, c.values(rows))
	}
	return args
}

// pgParams numbers a statement's parameters in order.
type pgParams struct{ n int }

// next is the number of the next parameter.
func (p *pgParams) next() int {
	p.n++
	return p.n
}

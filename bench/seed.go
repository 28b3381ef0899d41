package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// template is every row that belongs to one real, finished job, table by table in an order that
// satisfies the foreign keys. Cloning it (new job id, shifted times) seeds history that looks exactly
// like what CAO writes, whatever the schema version: the bench never hard-codes CAO's columns.
type template struct {
	created time.Time // the job's created_at
	tables  []templateTable
}

// templateTable holds one table's rows of the template job.
type templateTable struct {
	name   string
	cols   []string
	jobCol int     // index of the column holding the job id (id in jobs, job_id elsewhere)
	rows   [][]any // values ready for CopyFrom
}

// rowCount is the number of rows one clone of the template adds.
func (t *template) rowCount() int {
	n := 0
	for _, tt := range t.tables {
		n += len(tt.rows)
	}
	return n
}

// loadTemplate reads every row of job jobID: the jobs row and the rows of every table with a job_id
// column. Columns filled by sequences or identities are left out so that clones take new values.
func loadTemplate(ctx context.Context, db *pgxpool.Pool, jobID string) (*template, error) {
	order, err := tablesByForeignKeys(ctx, db)
	if err != nil {
		return nil, err
	}
	t := &template{}
	for _, table := range order {
		cols, err := copyableColumns(ctx, db, table)
		if err != nil {
			return nil, err
		}
		key := "job_id"
		if table == "jobs" {
			key = "id"
		}
		jobCol := slices.Index(cols, key)
		if jobCol < 0 {
			continue
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		q := fmt.Sprintf("SELECT %s FROM %s WHERE %s = $1", strings.Join(quoted, ", "), pgx.Identifier{table}.Sanitize(), pgx.Identifier{key}.Sanitize())
		rows, err := db.Query(ctx, q, jobID)
		if err != nil {
			return nil, fmt.Errorf("read template rows of %s: %w", table, err)
		}
		tt := templateTable{name: table, cols: cols, jobCol: jobCol}
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				rows.Close()
				return nil, err
			}
			for i, fd := range rows.FieldDescriptions() {
				// JSON decodes to Go values that would encode back as raw JSON text (a JSON string
				// "x" would come back as x): keep the JSON itself.
				if (fd.DataTypeOID == pgtype.JSONBOID || fd.DataTypeOID == pgtype.JSONOID) && vals[i] != nil {
					b, err := json.Marshal(vals[i])
					if err != nil {
						rows.Close()
						return nil, err
					}
					vals[i] = json.RawMessage(b)
				}
			}
			tt.rows = append(tt.rows, vals)
			if table == "jobs" {
				for i, c := range cols {
					if tm, ok := vals[i].(time.Time); ok && c == "created_at" {
						t.created = tm
					}
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(tt.rows) > 0 {
			t.tables = append(t.tables, tt)
		}
	}
	if t.created.IsZero() || !t.hasJob() {
		return nil, fmt.Errorf("template job %s not found", jobID)
	}
	return t, nil
}

// hasJob reports whether the template holds its jobs row. The jobs table need not come first: a
// table without a foreign key to it (the event log, on Postgres since migration 000007) may sort
// before it.
func (t *template) hasJob() bool {
	return slices.ContainsFunc(t.tables, func(tt templateTable) bool { return tt.name == "jobs" && len(tt.rows) == 1 })
}

// uuidV7At is a version 7 UUID for time at, as CAO gives a job created then (RFC 9562: the Unix
// time in milliseconds in the first 48 bits, then random bits), so that the seeded history lies in
// the indexes as a real one does.
func uuidV7At(at time.Time) uuid.UUID {
	u := uuid.New() // random, with the variant bits set
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = 0x70 | u[6]&0x0f
	return u
}

// seedClones writes n clones of the template with COPY, table by table. Clone i is created at
// newest − (n−1−i)×spacing, every time of the template shifted by the same amount: the clones are
// written oldest first, as a real history was, so that the indexes keyed by job id (UUIDv7, in
// creation order) grow at their end as they do in production instead of being split at their start
// (which leaves their pages half full). It returns the new ids.
func seedClones(ctx context.Context, db *pgxpool.Pool, t *template, n int, newest time.Time, spacing time.Duration) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, n)
	shifts := make([]time.Duration, n)
	for i := range n {
		at := newest.Add(-time.Duration(n-1-i) * spacing)
		ids[i] = uuidV7At(at)
		shifts[i] = at.Sub(t.created)
	}
	for _, tt := range t.tables {
		began := time.Now()
		src := &cloneSource{tt: tt, ids: ids, shifts: shifts, row: make([]any, len(tt.cols))}
		copied, err := db.CopyFrom(ctx, pgx.Identifier{tt.name}, tt.cols, src)
		if err != nil {
			return nil, fmt.Errorf("copy into %s: %w", tt.name, err)
		}
		progress("  %s: %d rows in %s", tt.name, copied, time.Since(began).Round(time.Millisecond))
	}
	return ids, nil
}

// cloneSource yields the template rows of one table once per clone, with the clone's id and times.
type cloneSource struct {
	tt       templateTable
	ids      []uuid.UUID
	shifts   []time.Duration
	clone, r int // position: clone index, template row index
	row      []any
}

func (s *cloneSource) Next() bool {
	if s.r >= len(s.tt.rows) {
		s.clone, s.r = s.clone+1, 0
	}
	if s.clone >= len(s.ids) {
		return false
	}
	for i, v := range s.tt.rows[s.r] {
		if tm, ok := v.(time.Time); ok {
			v = tm.Add(s.shifts[s.clone])
		}
		s.row[i] = v
	}
	s.row[s.tt.jobCol] = s.ids[s.clone]
	s.r++
	return true
}

func (s *cloneSource) Values() ([]any, error) { return s.row, nil }
func (s *cloneSource) Err() error             { return nil }

// tablesByForeignKeys returns the tables of the current schema, each after the tables it references.
func tablesByForeignKeys(ctx context.Context, db *pgxpool.Pool) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename`)
	if err != nil {
		return nil, err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	rows, err = db.Query(ctx, `SELECT c.relname, r.relname FROM pg_constraint k
		JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid
		WHERE k.contype = 'f' AND k.connamespace = current_schema()::regnamespace`)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	for rows.Next() {
		var from, to string
		if err := rows.Scan(&from, &to); err != nil {
			rows.Close()
			return nil, err
		}
		if from != to {
			deps[from] = append(deps[from], to)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return orderByDeps(tables, deps)
}

// orderByDeps orders tables so that each comes after the tables it depends on (deps), keeping the
// given order otherwise.
func orderByDeps(tables []string, deps map[string][]string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string) error
	visit = func(t string) error {
		switch state[t] {
		case 1:
			return fmt.Errorf("foreign key cycle through %s", t)
		case 2:
			return nil
		}
		state[t] = 1
		for _, d := range deps[t] {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[t] = 2
		order = append(order, t)
		return nil
	}
	for _, t := range tables {
		if err := visit(t); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// copyableColumns returns the columns of table that a copy should fill: all but generated ones and
// those taken from a sequence or an identity.
func copyableColumns(ctx context.Context, db *pgxpool.Pool, table string) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = $1
		  AND is_identity = 'NO' AND is_generated = 'NEVER'
		  AND coalesce(column_default, '') NOT LIKE 'nextval(%'
		ORDER BY ordinal_position`, table)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// settle brings the database to the steady state a long-lived history has: VACUUM (ANALYZE) sets the
// visibility map, hint bits and planner statistics that autovacuum would set over time, and CHECKPOINT
// writes the bulk load out, so that the measurements after it see neither the aftermath of the load
// nor autovacuum working through it. CHECKPOINT needs a privileged role; without it, it is skipped.
func settle(ctx context.Context, db *pgxpool.Pool) error {
	if _, err := db.Exec(ctx, "VACUUM (ANALYZE)"); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	if _, err := db.Exec(ctx, "CHECKPOINT"); err != nil {
		progress("  CHECKPOINT skipped: %v", err)
	}
	return nil
}

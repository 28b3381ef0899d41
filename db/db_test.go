package db

import (
	"io/fs"
	"strings"
	"testing"
)

func TestMigrationsArePaired(t *testing.T) {
	t.Parallel()
	for _, dialect := range []string{"postgres", "sqlite"} {
		fsys, dir, err := Migrations(dialect)
		if err != nil {
			t.Fatal(err)
		}
		entries, err := fs.ReadDir(fsys, dir)
		if err != nil {
			t.Fatal(err)
		}
		ups, downs := map[string]bool{}, map[string]bool{}
		for _, e := range entries {
			name := e.Name()
			switch {
			case strings.HasSuffix(name, ".up.sql"):
				ups[strings.TrimSuffix(name, ".up.sql")] = true
			case strings.HasSuffix(name, ".down.sql"):
				downs[strings.TrimSuffix(name, ".down.sql")] = true
			default:
				t.Errorf("%s/%s: not an .up.sql or .down.sql migration", dir, name)
			}
		}
		if len(ups) == 0 {
			t.Errorf("%s: no migrations", dir)
		}
		for v := range ups {
			if !downs[v] {
				t.Errorf("%s/%s.up.sql has no .down.sql", dir, v)
			}
		}
		for v := range downs {
			if !ups[v] {
				t.Errorf("%s/%s.down.sql has no .up.sql", dir, v)
			}
		}
	}
	if _, _, err := Migrations("mysql"); err == nil {
		t.Error("Migrations(\"mysql\") returned no error")
	}
}

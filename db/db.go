// Package db holds CAO's SQL migrations, one directory per database dialect, embedded so that every
// binary can apply them without files on disk (see package migrate in the pkg module).
package db

import (
	"embed"
	"fmt"
	"io/fs"
)

// Postgres holds the Postgres migrations under the directory "postgres".
//
//go:embed postgres/*.sql
var Postgres embed.FS

// SQLite holds the SQLite migrations under the directory "sqlite".
//
//go:embed sqlite/*.sql
var SQLite embed.FS

// Migrations returns the migration files of dialect ("postgres" or "sqlite") and the directory in
// that file system that holds them.
func Migrations(dialect string) (fs.FS, string, error) {
	switch dialect {
	case "postgres":
		return Postgres, "postgres", nil
	case "sqlite":
		return SQLite, "sqlite", nil
	}
	return nil, "", fmt.Errorf("unknown database dialect %q (want \"postgres\" or \"sqlite\")", dialect)
}

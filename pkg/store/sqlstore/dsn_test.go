package sqlstore

import (
	"testing"
	"time"
)

func TestPostgresDSNAddsSessionSettings(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		dsn  string
		cfg  Config
		want string
	}{
		{"url", "postgres://u@h/db", Config{},
			"postgres://u@h/db?idle_in_transaction_session_timeout=5000&enable_seqscan=off"},
		{"url with a query", "postgresql://u@h/db?sslmode=disable", Config{IdleInTxTimeout: time.Second},
			"postgresql://u@h/db?sslmode=disable&idle_in_transaction_session_timeout=1000&enable_seqscan=off"},
		{"keyword/value", "host=h dbname=db", Config{},
			"host=h dbname=db idle_in_transaction_session_timeout=5000 enable_seqscan=off"},
		{"no idle timeout", "postgres://u@h/db", Config{IdleInTxTimeout: -1},
			"postgres://u@h/db?enable_seqscan=off"},
		{"the DSN's own settings win", "postgres://u@h/db?enable_seqscan=on&idle_in_transaction_session_timeout=0", Config{},
			"postgres://u@h/db?enable_seqscan=on&idle_in_transaction_session_timeout=0"},
	} {
		if got := postgresDSN(c.dsn, c.cfg); got != c.want {
			t.Errorf("%s: postgresDSN(%q) = %q, want %q", c.name, c.dsn, got, c.want)
		}
	}
}

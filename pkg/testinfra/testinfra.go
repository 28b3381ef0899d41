// Package testinfra connects tests to the real Postgres and Redis they need, with isolation per test,
// and fails (never skips) with instructions when a service is unreachable.
package testinfra

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"github.com/redis/go-redis/v9"
)

const (
	redisHelp = "start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no " +
		"(or set CAO_TEST_REDIS_URL); CI's .ci/run starts it"
	postgresHelp = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start " +
		"(or set CAO_TEST_DATABASE_URL); CI's .ci/run starts it"
)

// RedisURL is the Redis server tests use: CAO_TEST_REDIS_URL or the local default.
func RedisURL() string {
	if u := os.Getenv("CAO_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// PostgresURL is the Postgres database tests use: CAO_TEST_DATABASE_URL or the local `test` database.
func PostgresURL() string {
	if u := os.Getenv("CAO_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// RandomSuffix returns a short random lowercase hex string for unique names.
func RandomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RedisDB is an isolated Redis logical database held by one test.
type RedisDB struct {
	Client *redis.Client
	URL    string // redis://host:port/N, usable by child processes
	DB     int
}

// Redis returns a client on a Redis logical database (1..15) that no other running test holds, flushed
// at start and at cleanup. Tests that do not use asynq can share DB 0 through KeyPrefix instead.
func Redis(t testing.TB) *RedisDB {
	t.Helper()
	base := RedisURL()
	opt, err := redis.ParseURL(base)
	if err != nil {
		t.Fatalf("CAO_TEST_REDIS_URL %q: %v", base, err)
	}
	ctrl := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ctrl.Ping(ctx).Err(); err != nil {
		_ = ctrl.Close()
		t.Fatalf("Redis is not reachable at %s: %v; %s", base, err, redisHelp)
	}
	owner := RandomSuffix()
	db := 0
	for db == 0 {
		for n := 1; n <= 15; n++ {
			ok, err := ctrl.SetNX(ctx, fmt.Sprintf("cao:testinfra:db:%d", n), owner, 10*time.Minute).Result()
			if err != nil {
				_ = ctrl.Close()
				t.Fatalf("reserve Redis db: %v", err)
			}
			if ok {
				db = n
				break
			}
		}
		if db == 0 {
			select {
			case <-ctx.Done():
				_ = ctrl.Close()
				t.Fatalf("no free Redis logical database (1..15) within 30s; too many Redis tests run at once")
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	dbOpt := *opt
	dbOpt.DB = db
	client := redis.NewClient(&dbOpt)
	if err := client.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("flush Redis db %d: %v", db, err)
	}
	u, _ := url.Parse(base)
	u.Path = fmt.Sprintf("/%d", db)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		_ = client.FlushDB(cctx).Err()
		_ = client.Close()
		key := fmt.Sprintf("cao:testinfra:db:%d", db)
		if v, _ := ctrl.Get(cctx, key).Result(); v == owner {
			_ = ctrl.Del(cctx, key).Err()
		}
		_ = ctrl.Close()
	})
	return &RedisDB{Client: client, URL: u.String(), DB: db}
}

// KeyPrefix returns a client on Redis DB 0 and a unique key prefix for this test; keys under the prefix
// are deleted at cleanup.
func KeyPrefix(t testing.TB) (*redis.Client, string) {
	t.Helper()
	opt, err := redis.ParseURL(RedisURL())
	if err != nil {
		t.Fatalf("CAO_TEST_REDIS_URL %q: %v", RedisURL(), err)
	}
	client := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		t.Fatalf("Redis is not reachable at %s: %v; %s", RedisURL(), err, redisHelp)
	}
	prefix := "test:" + RandomSuffix() + ":"
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		iter := client.Scan(cctx, 0, prefix+"*", 500).Iterator()
		for iter.Next(cctx) {
			_ = client.Del(cctx, iter.Val()).Err()
		}
		_ = client.Close()
	})
	return client, prefix
}

// PostgresSchema creates an empty schema for this test in the test database and returns a URL whose
// connections use it (search_path), so tests can migrate and run in parallel. The schema is dropped at
// cleanup.
func PostgresSchema(t testing.TB) string {
	t.Helper()
	base := PostgresURL()
	db, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("CAO_TEST_DATABASE_URL %q: %v", base, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		t.Fatalf("Postgres is not reachable at %s: %v; %s", base, err, postgresHelp)
	}
	schema := "t_" + RandomSuffix()
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		_ = db.Close()
		t.Fatalf("create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		_, _ = db.ExecContext(cctx, "DROP SCHEMA "+schema+" CASCADE")
		_ = db.Close()
	})
	return WithSearchPath(base, schema)
}

// WithSearchPath returns the Postgres URL with its search_path set to schema.
func WithSearchPath(pgURL, schema string) string {
	u, err := url.Parse(pgURL)
	if err != nil {
		return pgURL
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return strings.ReplaceAll(u.String(), "+", "%20")
}

// Context returns a context cancelled at the end of the test or after d, whichever comes first.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond every 10ms until it returns true or d passes, then fails the test with msg.
func Eventually(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: "+msg, append([]any{d}, args...)...)
		}
		<-tick.C
	}
}

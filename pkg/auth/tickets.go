package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lifetimes of the tokens Tokens issues.
const (
	// TicketTTL is how long a WebSocket ticket stays redeemable.
	TicketTTL = 60 * time.Second
	// SessionTTL is how long a /monitoring/ session lasts.
	SessionTTL = 12 * time.Hour
)

// ErrBadToken means the ticket or session does not exist, expired, was already used, or its key is
// no longer configured.
var ErrBadToken = errors.New("auth: invalid or expired ticket or session")

// Tokens issues the short-lived tokens that stand in for a key where a key would otherwise end up in
// a URL or a cookie:
//   - single-use WebSocket tickets: a browser, which cannot set headers on a WebSocket, trades its key
//     for a ticket (POST /api/v1/ws-tickets) and opens /ws/{id}?ticket=T;
//   - /monitoring/ sessions: the asynqmon UI's cookie holds a session value, not the key.
//
// Tokens live in Redis, so any API replica honours one another issued. Only digests are stored: of
// the token (the Redis key) and of the API key it was issued for, which is looked up again in the
// keyring on use, so removing a key from the configuration also ends its tickets and sessions.
type Tokens struct {
	rdb    redis.UniversalClient
	keys   *Keyring
	prefix string
	now    func() time.Time
}

// NewTokens keeps tokens in rdb under "<prefix>ticket:<digest>" and "<prefix>session:<digest>"
// (prefix "cao:" when empty); keys is the keyring tokens are checked against on use (nil or empty:
// authentication is off, and a token grants what it was issued with).
func NewTokens(rdb redis.UniversalClient, keys *Keyring, prefix string) *Tokens {
	if prefix == "" {
		prefix = "cao:"
	}
	return &Tokens{rdb: rdb, keys: keys, prefix: prefix, now: time.Now}
}

// Grant is what a token stands for.
type Grant struct {
	Caller Caller
	JobID  string // tickets: the one job the WebSocket may follow
}

// record is a token as stored.
type record struct {
	KeySum string `json:"key_sum,omitempty"` // hex digest of the API key (absent with authentication off)
	Caller Caller `json:"caller"`
	JobID  string `json:"job_id,omitempty"`
}

// IssueTicket stores a single-use ticket to follow job as the holder of key (empty with
// authentication off, then as caller) and returns it with its expiry.
func (t *Tokens) IssueTicket(ctx context.Context, key string, caller Caller, jobID string) (string, time.Time, error) {
	return t.issue(ctx, "ticket:", TicketTTL, key, caller, jobID)
}

// RedeemTicket uses the ticket up and returns what it grants. Of concurrent redemptions of one
// ticket only one succeeds (GETDEL is atomic).
func (t *Tokens) RedeemTicket(ctx context.Context, ticket string) (Grant, error) {
	return t.use(ctx, "ticket:", ticket, true)
}

// IssueSession stores a /monitoring/ session for the holder of key and returns its value and expiry.
func (t *Tokens) IssueSession(ctx context.Context, key string, caller Caller) (string, time.Time, error) {
	return t.issue(ctx, "session:", SessionTTL, key, caller, "")
}

// Session returns what a session grants (it stays valid until it expires).
func (t *Tokens) Session(ctx context.Context, session string) (Grant, error) {
	return t.use(ctx, "session:", session, false)
}

func (t *Tokens) issue(ctx context.Context, kind string, ttl time.Duration, key string, caller Caller, jobID string) (string, time.Time, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("auth: %s %w", kind, err)
	}
	token := base64.RawURLEncoding.EncodeToString(b[:])
	rec := record{Caller: caller, JobID: jobID}
	if key != "" {
		sum := Sum(key)
		rec.KeySum = hex.EncodeToString(sum[:])
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("auth: %s %w", kind, err)
	}
	expires := t.now().Add(ttl).UTC().Truncate(time.Second)
	if err := t.rdb.Set(ctx, t.redisKey(kind, token), val, ttl).Err(); err != nil {
		return "", time.Time{}, fmt.Errorf("auth: store %s %w", kind, err)
	}
	return token, expires, nil
}

func (t *Tokens) use(ctx context.Context, kind, token string, once bool) (Grant, error) {
	if token == "" || len(token) > 128 {
		return Grant{}, ErrBadToken
	}
	var (
		val []byte
		err error
	)
	if once {
		val, err = t.rdb.GetDel(ctx, t.redisKey(kind, token)).Bytes()
	} else {
		val, err = t.rdb.Get(ctx, t.redisKey(kind, token)).Bytes()
	}
	if errors.Is(err, redis.Nil) {
		return Grant{}, ErrBadToken
	}
	if err != nil {
		return Grant{}, fmt.Errorf("auth: read %s %w", kind, err)
	}
	var rec record
	if err := json.Unmarshal(val, &rec); err != nil {
		return Grant{}, ErrBadToken
	}
	g := Grant{Caller: rec.Caller, JobID: rec.JobID}
	if rec.KeySum != "" || !t.keys.Empty() {
		// Issued for a key: the key must still be configured, and grants what it grants today.
		var sum [sha256.Size]byte
		if n, err := hex.Decode(sum[:], []byte(rec.KeySum)); err != nil || n != len(sum) {
			return Grant{}, ErrBadToken
		}
		c, ok := t.keys.LookupSum(sum)
		if !ok {
			return Grant{}, ErrBadToken
		}
		g.Caller = c
	}
	return g, nil
}

func (t *Tokens) redisKey(kind, token string) string {
	sum := sha256.Sum256([]byte(token))
	return t.prefix + kind + hex.EncodeToString(sum[:])
}

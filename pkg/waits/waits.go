// Package waits records why a step waits for its service, so the API can say it ("waiting for a
// slot on llm: 8/8 in use", "token budget resets in 4.2 s"). A worker writes a note when a step
// cannot start at once and goes back to wait (parked in the fair queue, or scheduled for when a
// budget or hold ends); the note goes when the step is admitted, and expires by itself otherwise.
// Notes live in Redis only: they are a view of the moment, never part of a job's durable state.
package waits

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Reasons a step waits, as a Note records them.
const (
	Slot       = "slot"        // every slot of the service's max_concurrency is in use
	TenantSlot = "tenant_slot" // the tenant's share of the service (max_concurrency_per_tenant) is in use
	KeySlot    = "key_slot"    // the step's concurrency_key has max_concurrency_per_key calls in flight
	Rate       = "rate_budget" // a rate budget of the service (rate_limit, rate_limits) has no room
	Hold       = "hold"        // the provider said its budget is spent; every worker holds its calls
)

// Note is why one step waits.
type Note struct {
	Reason  string    `json:"reason"`
	Service string    `json:"service"`
	Tenant  string    `json:"tenant,omitempty"`
	Since   time.Time `json:"since"`            // when the step first waited
	Until   time.Time `json:"until,omitzero"`   // when the worker expects room (budgets, holds), if known
	Budget  string    `json:"budget,omitempty"` // which budget, for Rate and Hold
}

// ttl bounds how long a note outlives a worker that died before clearing it.
const ttl = 10 * time.Minute

// Book keeps notes in Redis under a key prefix.
type Book struct {
	rdb    redis.UniversalClient
	prefix string
}

// New returns a Book on rdb whose keys start with prefix (CAO's is "cao:").
func New(rdb redis.UniversalClient, prefix string) *Book { return &Book{rdb: rdb, prefix: prefix} }

func (b *Book) key(jobID string) string { return b.prefix + "waits:{" + jobID + "}" }

// Record notes why step of job jobID waits.
func (b *Book) Record(ctx context.Context, jobID, step string, n Note) error {
	v, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("waits: %w", err)
	}
	k := b.key(jobID)
	pipe := b.rdb.Pipeline()
	pipe.HSet(ctx, k, step, v)
	pipe.PExpire(ctx, k, ttl)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("waits: record: %w", err)
	}
	return nil
}

// Clear removes step's note: it waits no more.
func (b *Book) Clear(ctx context.Context, jobID, step string) error {
	if err := b.rdb.HDel(ctx, b.key(jobID), step).Err(); err != nil {
		return fmt.Errorf("waits: clear: %w", err)
	}
	return nil
}

// Job returns the notes of job jobID's waiting steps, by step name.
func (b *Book) Job(ctx context.Context, jobID string) (map[string]Note, error) {
	m, err := b.rdb.HGetAll(ctx, b.key(jobID)).Result()
	if err != nil {
		return nil, fmt.Errorf("waits: read: %w", err)
	}
	out := make(map[string]Note, len(m))
	for step, v := range m {
		var n Note
		if json.Unmarshal([]byte(v), &n) == nil {
			out[step] = n
		}
	}
	return out, nil
}

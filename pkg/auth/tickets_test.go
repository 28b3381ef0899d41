package auth

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/testinfra"
)

func TestTickets(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, 30*time.Second)
	rdb := testinfra.Redis(t).Client
	keys := NewKeyring(Key{Tenant: "acme", Secret: "k-acme"}, Key{Tenant: "ops", Secret: "k-root", Admin: true})
	tk := NewTokens(rdb, keys, "")

	ticket, expires, err := tk.IssueTicket(ctx, "k-acme", Caller{Tenant: "acme"}, "job-1")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(ticket), 40)
	require.WithinDuration(t, time.Now().Add(TicketTTL), expires, 2*time.Second)

	stored, err := rdb.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.Len(t, stored, 1)
	require.NotContains(t, stored[0], ticket, "only a digest of the ticket is stored")
	val, err := rdb.Get(ctx, stored[0]).Result()
	require.NoError(t, err)
	require.NotContains(t, val, "k-acme", "only a digest of the key is stored")
	ttl, err := rdb.TTL(ctx, stored[0]).Result()
	require.NoError(t, err)
	require.LessOrEqual(t, ttl, TicketTTL)
	require.Greater(t, ttl, TicketTTL-5*time.Second)

	got, err := tk.RedeemTicket(ctx, ticket)
	require.NoError(t, err)
	require.Equal(t, Grant{Caller: Caller{Tenant: "acme"}, JobID: "job-1"}, got)
	_, err = tk.RedeemTicket(ctx, ticket)
	require.ErrorIs(t, err, ErrBadToken, "single use")
	for _, bad := range []string{"", "nope", string(make([]byte, 500))} {
		_, err = tk.RedeemTicket(ctx, bad)
		require.ErrorIs(t, err, ErrBadToken)
	}

	// Of many concurrent redemptions of one ticket, exactly one wins.
	ticket, _, err = tk.IssueTicket(ctx, "k-acme", Caller{Tenant: "acme"}, "job-2")
	require.NoError(t, err)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tk.RedeemTicket(ctx, ticket); err == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	require.EqualValues(t, 1, wins.Load())

	// A ticket of a key that is no longer configured grants nothing.
	ticket, _, err = tk.IssueTicket(ctx, "k-acme", Caller{Tenant: "acme"}, "job-3")
	require.NoError(t, err)
	rotated := NewTokens(rdb, NewKeyring(Key{Tenant: "acme", Secret: "k-acme-2"}), "")
	_, err = rotated.RedeemTicket(ctx, ticket)
	require.ErrorIs(t, err, ErrBadToken)
}

func TestSessions(t *testing.T) {
	t.Parallel()
	ctx := testinfra.Context(t, 30*time.Second)
	rdb := testinfra.Redis(t).Client
	keys := NewKeyring(Key{Tenant: "ops", Secret: "k-root", Admin: true})
	tk := NewTokens(rdb, keys, "")
	s, expires, err := tk.IssueSession(ctx, "k-root", Caller{Tenant: "ops", Admin: true})
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(SessionTTL), expires, 2*time.Second)
	for range 2 {
		g, err := tk.Session(ctx, s)
		require.NoError(t, err, "a session is used many times")
		require.Equal(t, Caller{Tenant: "ops", Admin: true}, g.Caller)
	}
	_, err = tk.Session(ctx, s+"x")
	require.ErrorIs(t, err, ErrBadToken)

	// With authentication off a token grants what it was issued with.
	open := NewTokens(rdb, nil, "")
	s, _, err = open.IssueSession(ctx, "", Caller{Tenant: DefaultTenant, Admin: true})
	require.NoError(t, err)
	g, err := open.Session(ctx, s)
	require.NoError(t, err)
	require.Equal(t, Caller{Tenant: DefaultTenant, Admin: true}, g.Caller)
	// ...but not once keys are configured.
	_, err = tk.Session(ctx, s)
	require.ErrorIs(t, err, ErrBadToken)
}

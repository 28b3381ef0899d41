package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

// tenantTests check that reads are scoped by tenant in the store itself.
var tenantTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"TenantScopedReads", testTenantScopedReads},
	{"TenantIdempotencyKeys", testTenantIdempotencyKeys},
}

func testTenantScopedReads(t *testing.T, s store.Store) {
	ctx := testContext(t)
	acme := newJob("alpha", store.JobPending, base.Add(time.Millisecond))
	acme.Tenant = "acme"
	globex := newJob("alpha", store.JobPending, base.Add(2*time.Millisecond))
	globex.Tenant = "globex"
	anon := newJob("alpha", store.JobPending, base.Add(3*time.Millisecond))
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		for _, j := range []*store.Job{acme, globex, anon} {
			if err := tx.InsertJob(ctx, j); err != nil {
				return err
			}
		}
		return nil
	}))
	require.Equal(t, store.DefaultTenant, anon.Tenant, "a job inserted without a tenant belongs to the default tenant")

	got, err := s.GetJob(ctx, store.TenantScope("acme"), acme.ID)
	require.NoError(t, err)
	require.Equal(t, "acme", got.Tenant)
	_, err = s.GetJob(ctx, store.TenantScope("globex"), acme.ID)
	require.ErrorIs(t, err, store.ErrNotFound, "another tenant's job is not found")
	_, err = s.GetJob(ctx, store.Scope{}, acme.ID)
	require.ErrorIs(t, err, store.ErrNotFound, "the zero scope sees nothing")
	got, err = s.GetJob(ctx, store.AllTenants, globex.ID)
	require.NoError(t, err)
	require.Equal(t, "globex", got.Tenant)
	loaded, _, err := s.LoadJob(ctx, globex.ID)
	require.NoError(t, err)
	require.Equal(t, "globex", loaded.Tenant)

	ids := func(jobs []store.Job) []string {
		out := make([]string, len(jobs))
		for i, j := range jobs {
			out[i] = j.ID
		}
		return out
	}
	for _, tc := range []struct {
		f    store.JobFilter
		want []string
	}{
		{store.JobFilter{Scope: store.TenantScope("acme")}, []string{acme.ID}},
		{store.JobFilter{Scope: store.TenantScope("globex"), Feature: "alpha", Status: store.JobPending}, []string{globex.ID}},
		{store.JobFilter{Scope: store.TenantScope(store.DefaultTenant)}, []string{anon.ID}},
		{store.JobFilter{Scope: store.TenantScope("initech")}, []string{}},
		{store.JobFilter{}, []string{}},
		{store.JobFilter{Scope: store.AllTenants}, []string{anon.ID, globex.ID, acme.ID}},
		{store.JobFilter{Scope: store.AllTenants, After: &store.Cursor{CreatedAt: anon.CreatedAt, ID: anon.ID}}, []string{globex.ID, acme.ID}},
	} {
		jobs, err := s.ListJobs(ctx, tc.f)
		require.NoError(t, err)
		require.Equal(t, tc.want, ids(jobs), "%+v", tc.f)
	}
}

func testTenantIdempotencyKeys(t *testing.T, s store.Store) {
	ctx := testContext(t)
	for _, tenant := range []string{"acme", "globex"} {
		rec := &store.IdempotencyRecord{Tenant: tenant, Key: "same-key", RequestHash: "h-" + tenant,
			CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
		require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertIdempotencyKey(ctx, rec) }),
			"two tenants may use the same key")
	}
	dup := &store.IdempotencyRecord{Tenant: "acme", Key: "same-key", RequestHash: "x", CreatedAt: base, ExpiresAt: base}
	require.ErrorIs(t, s.Tx(ctx, func(tx store.Tx) error { return tx.InsertIdempotencyKey(ctx, dup) }), store.ErrDuplicate)

	got, err := s.GetIdempotencyKey(ctx, "globex", "same-key")
	require.NoError(t, err)
	require.Equal(t, "h-globex", got.RequestHash)
	_, err = s.GetIdempotencyKey(ctx, "initech", "same-key")
	require.ErrorIs(t, err, store.ErrNotFound)

	// Binding a key at job creation binds the job's tenant's key only.
	j := newJob("alpha", store.JobPending, base)
	j.Tenant = "globex"
	require.NoError(t, s.Apply(ctx, &store.Change{Job: j, Create: true, IdempotencyKey: "same-key"}))
	got, err = s.GetIdempotencyKey(ctx, "globex", "same-key")
	require.NoError(t, err)
	require.Equal(t, j.ID, got.JobID)
	got, err = s.GetIdempotencyKey(ctx, "acme", "same-key")
	require.NoError(t, err)
	require.Empty(t, got.JobID, "the other tenant's key stays unbound")

	other := newJob("alpha", store.JobPending, base)
	other.Tenant = "initech"
	require.ErrorIs(t, s.Apply(ctx, &store.Change{Job: other, Create: true, IdempotencyKey: "same-key"}), store.ErrConflict,
		"a tenant cannot bind another tenant's key")

	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error { return tx.DeleteIdempotencyKey(ctx, "acme", "same-key") }))
	_, err = s.GetIdempotencyKey(ctx, "acme", "same-key")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.GetIdempotencyKey(ctx, "globex", "same-key")
	require.NoError(t, err, "deleting one tenant's key leaves the other's")
}

package auth

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseKeys(t *testing.T) {
	t.Parallel()
	keys, err := ParseKeys(" k1, acme:k2 ,, globex:k:3", false)
	require.NoError(t, err)
	require.Equal(t, []Key{
		{Tenant: DefaultTenant, Secret: "k1"}, {Tenant: "acme", Secret: "k2"}, {Tenant: "globex", Secret: "k:3"},
	}, keys)
	admins, err := ParseKeys("ops:root", true)
	require.NoError(t, err)
	require.True(t, admins[0].Admin)

	for _, bad := range []string{"acme:", ":k", "bad tenant:secret1", "-x:secret1", "a/b:secret1"} {
		_, err := ParseKeys(bad, false)
		require.Error(t, err, bad)
		require.NotContains(t, err.Error(), "secret1", "an error must not quote a key")
	}
}

func TestKeyring(t *testing.T) {
	t.Parallel()
	kr := NewKeyring(Key{Tenant: "acme", Secret: "k1"}, Key{Tenant: "ops", Secret: "root", Admin: true},
		Key{Tenant: "ops", Secret: "k1", Admin: true})
	c, ok := kr.Lookup("k1")
	require.True(t, ok)
	require.Equal(t, Caller{Tenant: "acme", Admin: true}, c, "a key listed as API and admin key is an admin key of its first tenant")
	c, ok = kr.Lookup("root")
	require.True(t, ok)
	require.Equal(t, Caller{Tenant: "ops", Admin: true}, c)
	for _, miss := range []string{"", "k", "k12", "root "} {
		_, ok := kr.Lookup(miss)
		require.False(t, ok, miss)
	}
	require.False(t, kr.Empty())
	require.True(t, NewKeyring().Empty())
	var nilRing *Keyring
	require.True(t, nilRing.Empty())
	_, ok = nilRing.Lookup("k1")
	require.False(t, ok)
}

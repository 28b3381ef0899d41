// Package auth holds CAO's API keys and the tenants they belong to (CAO_API_KEYS, CAO_ADMIN_KEYS):
// how the entries are written, and how a presented key is matched to the caller it stands for.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"regexp"
	"strings"

	"github.com/cao-run/cao/pkg/store"
)

// DefaultTenant owns bare keys, every job made with authentication off, and dev mode's jobs.
const DefaultTenant = store.DefaultTenant

// tenantPattern is what a tenant name may look like: it appears in URLs (?tenant=), Redis keys and
// metric labels, so it is kept to a small safe alphabet.
var tenantPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidTenant reports whether name can be a tenant.
func ValidTenant(name string) bool { return tenantPattern.MatchString(name) }

// Key is one configured API key.
type Key struct {
	Tenant string
	Secret string
	Admin  bool // from CAO_ADMIN_KEYS: sees every tenant and may change queues in /monitoring/
}

// Caller is who a request acts for: the tenant of its key, and whether the key is an admin's.
type Caller struct {
	Tenant string
	Admin  bool
}

// ParseKeys reads comma-separated entries `key` or `tenant:key` (a bare key belongs to
// DefaultTenant). The error never quotes a key.
func ParseKeys(list string, admin bool) ([]Key, error) {
	var out []Key
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		k := Key{Tenant: DefaultTenant, Secret: entry, Admin: admin}
		if tenant, secret, ok := strings.Cut(entry, ":"); ok {
			k.Tenant, k.Secret = strings.TrimSpace(tenant), strings.TrimSpace(secret)
		}
		if !ValidTenant(k.Tenant) {
			return nil, fmt.Errorf("entry %d: tenant must be 1-63 letters, digits, '_', '.' or '-' and start with a letter or digit", i+1)
		}
		if k.Secret == "" {
			return nil, fmt.Errorf("entry %d: empty key", i+1)
		}
		out = append(out, k)
	}
	return out, nil
}

// Keyring matches presented keys to callers. Every lookup compares against every key in constant
// time, so the time taken says nothing about which key, or how much of one, matched.
type Keyring struct {
	keys []hashedKey
}

type hashedKey struct {
	sum    [sha256.Size]byte
	caller Caller
}

// NewKeyring returns a keyring over keys; a key listed twice keeps its first entry, and a key that
// is both an API key and an admin key is an admin key.
func NewKeyring(keys ...Key) *Keyring {
	kr := &Keyring{}
	for _, k := range keys {
		sum := sha256.Sum256([]byte(k.Secret))
		dup := false
		for i := range kr.keys {
			if kr.keys[i].sum == sum {
				dup = true
				kr.keys[i].caller.Admin = kr.keys[i].caller.Admin || k.Admin
			}
		}
		if !dup {
			kr.keys = append(kr.keys, hashedKey{sum: sum, caller: Caller{Tenant: k.Tenant, Admin: k.Admin}})
		}
	}
	return kr
}

// Empty reports whether no key is configured (authentication is off).
func (kr *Keyring) Empty() bool { return kr == nil || len(kr.keys) == 0 }

// Lookup returns the caller the key stands for.
func (kr *Keyring) Lookup(key string) (Caller, bool) {
	if kr == nil || key == "" {
		return Caller{}, false
	}
	// Comparing fixed-size digests keeps the comparison constant-time whatever the key's length.
	return kr.LookupSum(Sum(key))
}

// Sum is the digest a key is known by where it must be remembered (tickets, sessions): the key
// itself is never stored.
func Sum(key string) [sha256.Size]byte { return sha256.Sum256([]byte(key)) }

// LookupSum returns the caller of the key whose Sum is sum, if that key is still configured.
func (kr *Keyring) LookupSum(sum [sha256.Size]byte) (Caller, bool) {
	if kr == nil {
		return Caller{}, false
	}
	var found Caller
	ok := 0
	for _, k := range kr.keys {
		if subtle.ConstantTimeCompare(sum[:], k.sum[:]) == 1 {
			found, ok = k.caller, 1
		}
	}
	return found, ok == 1
}

package httpapi

// This file decides who a request acts for: API keys (headers; the query only where a browser cannot
// send a header), WebSocket tickets, /monitoring/ sessions, the scope of jobs a caller sees, and the
// per-tenant request budget.

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cao-run/cao/pkg/auth"
	"github.com/cao-run/cao/pkg/store"
)

// callerCtxKey holds the auth.Caller of an authenticated request in the gin context.
const callerCtxKey = "cao.caller"

// keyCtxKey holds the API key the request presented (to issue tickets and sessions for it).
const keyCtxKey = "cao.key"

// openCaller is who a request acts for when authentication is off: the default tenant, with every
// right (there is no one else).
var openCaller = auth.Caller{Tenant: auth.DefaultTenant, Admin: true}

// callerOf returns who the request acts for (set by authenticate).
func callerOf(c *gin.Context) auth.Caller {
	if v, ok := c.Get(callerCtxKey); ok {
		if cl, ok := v.(auth.Caller); ok {
			return cl
		}
	}
	return auth.Caller{} // sees nothing: a route that forgot authenticate fails closed
}

// scopeOf is the set of jobs the caller sees: its tenant's, or every tenant's for an admin.
func scopeOf(c *gin.Context) store.Scope {
	cl := callerOf(c)
	if cl.Admin {
		return store.AllTenants
	}
	return store.TenantScope(cl.Tenant)
}

// headerKey returns the key of Authorization: Bearer or X-API-Key.
func headerKey(r *http.Request) string {
	if k := r.Header.Get("X-API-Key"); k != "" {
		return k
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// keySource says where authenticate may look for a key.
type keySource int

const (
	headersOnly    keySource = iota // REST: a key in the URL is refused
	headersOrQuery                  // /ws/ and /monitoring/: a browser cannot send headers there
)

// authenticate admits requests that carry a configured key and records their caller. With no key
// configured (CAO_AUTH=off, dev mode) every request acts for the default tenant.
func (s *Server) authenticate(src keySource) gin.HandlerFunc {
	return func(c *gin.Context) {
		if s.identify(c, src) {
			c.Next()
		}
	}
}

// identify records the request's caller from its key, or answers 401 and reports false.
func (s *Server) identify(c *gin.Context, src keySource) bool {
	keys := s.d.Settings.Keys
	if keys.Empty() {
		c.Set(callerCtxKey, openCaller)
		return true
	}
	_, inQuery := c.GetQuery("api_key")
	if inQuery && src == headersOnly {
		unauthorized(c, "?api_key= is accepted only on /ws/ and /monitoring/; send the key in Authorization: Bearer <key> or X-API-Key")
		return false
	}
	key := headerKey(c.Request)
	if key == "" && src == headersOrQuery {
		key = c.Query("api_key")
	}
	cl, ok := keys.Lookup(key)
	if !ok {
		unauthorized(c, "a valid API key is required (Authorization: Bearer <key> or X-API-Key)")
		return false
	}
	c.Set(callerCtxKey, cl)
	c.Set(keyCtxKey, key)
	return true
}

func unauthorized(c *gin.Context, msg string) {
	c.Header("WWW-Authenticate", `Bearer realm="cao"`)
	abort(c, http.StatusUnauthorized, codeUnauthorized, msg, nil)
}

// wsAuthenticate admits a WebSocket by a ticket for its job (?ticket=), or as authenticate does.
func (s *Server) wsAuthenticate() gin.HandlerFunc {
	return func(c *gin.Context) {
		ticket, ok := c.GetQuery("ticket")
		if !ok {
			if s.identify(c, headersOrQuery) {
				c.Next()
			}
			return
		}
		g, err := s.d.Tokens.RedeemTicket(c.Request.Context(), ticket)
		switch {
		case errors.Is(err, auth.ErrBadToken):
			unauthorized(c, "the ticket is unknown, expired or already used; get a new one from POST /api/v1/ws-tickets")
			return
		case err != nil:
			s.fail(c, err)
			return
		case !strings.EqualFold(g.JobID, c.Param("id")):
			unauthorized(c, "the ticket was issued for another job")
			return
		}
		c.Set(callerCtxKey, g.Caller)
		c.Next()
	}
}

// monitoringSession is the cookie that keeps the asynqmon UI signed in: a session value issued for
// the key, never the key itself.
const monitoringSession = "cao_monitoring_session"

// monitoringAuth admits /monitoring/: open /monitoring/?api_key=KEY once (or send the key in a
// header) and an HttpOnly session cookie scoped to /monitoring signs the UI's own requests in. Only
// admin keys may change queues or tasks, or read the Redis server's INFO (which describes every
// database on the server, not only CAO's).
func (s *Server) monitoringAuth() gin.HandlerFunc {
	return func(c *gin.Context) {
		if s.d.Settings.Keys.Empty() {
			c.Set(callerCtxKey, openCaller)
		} else if v, err := c.Cookie(monitoringSession); err == nil && v != "" && headerKey(c.Request) == "" && c.Query("api_key") == "" {
			g, err := s.d.Tokens.Session(c.Request.Context(), v)
			if err != nil {
				if !errors.Is(err, auth.ErrBadToken) {
					s.fail(c, err)
					return
				}
				// Clear the dead session's cookie (same attributes as when it was set).
				//nolint:gosec // Secure is set whenever the request came over HTTPS; dev mode is plain HTTP
				http.SetCookie(c.Writer, &http.Cookie{
					Name: monitoringSession, Path: "/monitoring", MaxAge: -1, HttpOnly: true,
					Secure: secureRequest(c), SameSite: http.SameSiteStrictMode,
				})
				unauthorized(c, "the monitoring session expired; open /monitoring/?api_key=<key> again")
				return
			}
			c.Set(callerCtxKey, g.Caller)
		} else {
			if !s.identify(c, headersOrQuery) {
				return
			}
			// A browser signs in once with ?api_key=; scripts that send the key in a header on
			// every request need no session.
			if key := c.Query("api_key"); key != "" {
				if !s.startSession(c, key) {
					return
				}
				if c.Request.Method == http.MethodGet {
					// Take the key out of the address bar (and history) once the cookie is set.
					u := *c.Request.URL
					q := u.Query()
					q.Del("api_key")
					u.RawQuery = q.Encode()
					c.Header("Cache-Control", "no-store")
					c.Redirect(http.StatusSeeOther, u.RequestURI())
					c.Abort()
					return
				}
			}
		}
		if !callerOf(c).Admin && (changesQueues(c.Request) || strings.HasSuffix(c.Request.URL.Path, "/api/redis_info")) {
			abort(c, http.StatusForbidden, codeForbidden, "only admin keys (CAO_ADMIN_KEYS) may change queues and tasks or read the Redis server's info", nil)
			return
		}
		c.Next()
	}
}

// startSession sets the /monitoring session cookie for key; on failure it answers and reports false.
func (s *Server) startSession(c *gin.Context, key string) bool {
	session, expires, err := s.d.Tokens.IssueSession(c.Request.Context(), key, callerOf(c))
	if err != nil {
		s.fail(c, err)
		return false
	}
	//nolint:gosec // Secure is set whenever the request came over HTTPS; dev mode is plain HTTP
	http.SetCookie(c.Writer, &http.Cookie{
		Name: monitoringSession, Value: session, Path: "/monitoring", HttpOnly: true, Secure: secureRequest(c),
		SameSite: http.SameSiteStrictMode, Expires: expires,
	})
	return true
}

// changesQueues reports whether an asynqmon request would change something (its API changes state
// only with POST, PUT, PATCH and DELETE).
func changesQueues(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// rateLimit holds each tenant to CAO_RATE_LIMIT across the fleet (the budget lives in Redis). If Redis
// cannot be asked, the request goes through: the budget protects the API, and refusing everything
// while Redis restarts would do more harm than a short unmetered spell.
func (s *Server) rateLimit() gin.HandlerFunc {
	rl := s.d.Settings.RateLimit
	return func(c *gin.Context) {
		if s.d.Limiter == nil || rl.Requests <= 0 {
			c.Next()
			return
		}
		tenant := callerOf(c).Tenant
		_, ok, wait, err := s.d.Limiter.Reserve(c.Request.Context(), "api:"+tenant, rl.Requests, rl.Per)
		if err != nil {
			s.log.Warn("rate limit unavailable; request let through", "tenant", tenant, "err", err)
			c.Next()
			return
		}
		if !ok {
			s.d.Metrics.RateLimited.WithLabelValues("api").Inc()
			tooMany(c, wait, fmt.Sprintf("tenant %q is over its request budget of %d per %s", tenant, rl.Requests, rl.Per))
			return
		}
		c.Next()
	}
}

// tooMany answers 429 rate_limited with Retry-After in whole seconds (at least 1).
func tooMany(c *gin.Context, wait time.Duration, msg string) {
	c.Header("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
	abort(c, http.StatusTooManyRequests, codeRateLimited, msg, nil)
}

// tenantFilter applies ?tenant= to a job list: admins choose any tenant, others only their own.
func tenantFilter(c *gin.Context, f *store.JobFilter) bool {
	t, ok := c.GetQuery("tenant")
	if !ok {
		return true
	}
	if !auth.ValidTenant(t) {
		abort(c, http.StatusBadRequest, codeInvalidQuery, "tenant must be 1-63 letters, digits, '_', '.' or '-'", nil)
		return false
	}
	cl := callerOf(c)
	if !cl.Admin && t != cl.Tenant {
		abort(c, http.StatusForbidden, codeForbidden, "only admin keys may list another tenant's jobs", nil)
		return false
	}
	f.Scope = store.TenantScope(t)
	return true
}

type ticketBody struct {
	JobID string `json:"job_id"`
}

// createTicket answers POST /api/v1/ws-tickets: a single-use ticket to open /ws/{job_id}?ticket=T.
func (s *Server) createTicket(c *gin.Context) {
	var body ticketBody
	if !s.readJSON(c, &body, false) {
		return
	}
	id, ok := parseJobID(c, body.JobID)
	if !ok {
		return
	}
	if _, err := s.d.Jobs.Job(c.Request.Context(), scopeOf(c), id); err != nil {
		s.fail(c, err)
		return
	}
	ticket, expires, err := s.d.Tokens.IssueTicket(c.Request.Context(), c.GetString(keyCtxKey), callerOf(c), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusCreated, gin.H{"success": true, "ticket": ticket, "expires_at": expires.Format(time.RFC3339)})
}

// secureRequest reports whether the request came over HTTPS (directly or through a proxy that says so).
func secureRequest(c *gin.Context) bool {
	return c.Request.TLS != nil || strings.EqualFold(c.GetHeader("X-Forwarded-Proto"), "https")
}

// Package httpapi is CAO's HTTP surface (Gin): the REST API, health, metrics, the WebSocket monitor,
// the browser pages and the asynqmon UI. Handlers decode, call one method of the core, and map the
// result; the core lives in pkg/ and knows nothing of HTTP.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/cao-run/cao/pkg/health"
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options are the API's settings beyond the node's configuration.
type Options struct {
	// Monitoring serves the asynqmon UI under /monitoring/ (nil: not served).
	Monitoring http.Handler
}

// Server is the HTTP API over the core's services.
type Server struct {
	d    Deps
	log  *slog.Logger
	opts Options
	ws   *wsHub
}

// New returns the API server over d.
func New(d Deps, opts Options) *Server { return newServer(d, opts, defaultWSConfig()) }

// newServer is New with the WebSocket monitor's tuning (tests shorten its intervals).
func newServer(d Deps, opts Options, ws wsConfig) *Server {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	s := &Server{d: d, log: d.Logger.With("component", "api"), opts: opts}
	s.ws = newWSHub(s, ws)
	return s
}

// Handler builds the Gin engine with every route.
func (s *Server) Handler() http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	r.Use(s.recovery(), s.accessLog(), s.cors())
	r.NoRoute(func(c *gin.Context) { abort(c, http.StatusNotFound, codeNotFound, "no such route", nil) })
	r.NoMethod(func(c *gin.Context) {
		abort(c, http.StatusMethodNotAllowed, codeMethodNotAllowed, "method not allowed on this route", nil)
	})

	r.GET("/health", s.live)
	r.GET("/health/services", s.services)
	r.GET("/metrics", s.authenticate(headersOnly), gin.WrapH(promhttp.HandlerFor(s.d.Metrics.Registry, promhttp.HandlerOpts{})))

	v1 := r.Group("/api/v1")
	v1.GET("/health", s.live)
	v1.GET("/health/services", s.services)
	v1.GET("/openapi.json", openAPI(r, s.d.Registry)) // the OpenAPI document (openapi.json), no key needed
	authed := v1.Group("", s.authenticate(headersOnly), s.rateLimit())
	authed.POST("/jobs", s.createJob)
	authed.GET("/jobs", s.listJobs)
	authed.GET("/jobs/:id", s.getJob)
	authed.POST("/jobs/:id/resume", s.resumeJob)
	authed.POST("/jobs/:id/cancel", s.cancelJob)
	authed.GET("/jobs/:id/events", s.jobEvents)
	authed.GET("/features", s.features)
	authed.POST("/ws-tickets", s.createTicket)

	r.GET("/ws/:id", s.wsAuthenticate(), s.ws.serve)
	s.registerUI(r)
	if s.opts.Monitoring != nil {
		mon := gin.WrapH(s.opts.Monitoring)
		r.Any("/monitoring", func(c *gin.Context) {
			u := "/monitoring/"
			if q := c.Request.URL.RawQuery; q != "" {
				u += "?" + q
			}
			c.Redirect(http.StatusMovedPermanently, u)
		})
		r.Any("/monitoring/*path", s.monitoringAuth(), mon)
	}
	return headAsGet(r)
}

// headAsGet serves HEAD wherever GET is served: the request is routed as a GET, and net/http, which
// knows the request was a HEAD, sends the headers without the body.
func headAsGet(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			r = r.Clone(r.Context())
			r.Method = http.MethodGet
		}
		h.ServeHTTP(w, r)
	})
}

// Stop closes every WebSocket connection (used on shutdown before the HTTP server drains).
func (s *Server) Stop(ctx context.Context) error { return s.ws.stop(ctx) }

func (s *Server) live(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) }

// services answers /health/services: the overall status to anyone, the detail (services, limits,
// queues) only with a valid key.
func (s *Server) services(c *gin.Context) {
	_, keyed := s.d.Settings.Keys.Lookup(headerKey(c.Request))
	keyed = keyed || s.d.Settings.Keys.Empty()
	var body any
	overall := ""
	if keyed {
		rep := s.d.Health.Run(c.Request.Context())
		body, overall = rep, rep.Status
	} else {
		overall = s.d.Health.Status(c.Request.Context())
		body = gin.H{"status": overall}
	}
	status := http.StatusOK
	if overall == health.StatusDown {
		status = http.StatusServiceUnavailable
		c.Header("Retry-After", "5")
	}
	c.JSON(status, body)
}

// unavailable reports whether the database or Redis is down right now (to answer 503, not 500).
func (s *Server) unavailable(ctx context.Context) bool { return s.d.Health.Unavailable(ctx) }

// cors answers preflights and sets CORS headers for origins in CAO_ALLOWED_ORIGINS.
func (s *Server) cors() gin.HandlerFunc {
	allowed := s.d.Settings.AllowedOrigins
	return func(c *gin.Context) {
		origin := c.GetHeader("Origin")
		if origin != "" && (slices.Contains(allowed, origin) || slices.Contains(allowed, "*")) {
			h := c.Writer.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, X-API-Key")
			h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
			h.Set("Access-Control-Max-Age", "600")
			if c.Request.Method == http.MethodOptions {
				c.AbortWithStatus(http.StatusNoContent)
				return
			}
		}
		c.Next()
	}
}

func (s *Server) recovery() gin.HandlerFunc {
	return gin.CustomRecovery(func(c *gin.Context, err any) {
		s.log.Error("panic in handler", "path", c.Request.URL.Path, "panic", err)
		abort(c, http.StatusInternalServerError, codeInternal, "internal error", nil)
	})
}

func (s *Server) accessLog() gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		// The query string is not logged: it may carry an api_key.
		s.log.Debug("http", "method", c.Request.Method, "path", c.Request.URL.Path, "status", c.Writer.Status(),
			"ms", time.Since(start).Milliseconds())
	}
}

package httpapi

import (
	_ "embed"
	"net/http"

	"github.com/gin-gonic/gin"
)

// openAPIDoc is the OpenAPI 3 document of the REST API: the single description of every route,
// parameter, body, answer and error code, kept next to the handlers and served as is. The tests
// check every route of the engine against it and every operation's answers against its schemas.
//
//go:embed openapi.json
var openAPIDoc []byte

// routesProbe is how this package's tests read the routes of an engine that Handler wraps (see
// openAPI); nothing outside the package can put one in a request's context.
type routesProbe struct{ routes gin.RoutesInfo }

type routesProbeKey struct{}

// openAPI serves the OpenAPI document (GET /api/v1/openapi.json, no key needed). r is the engine the
// route is registered on: a request whose context carries a *routesProbe gets r's routes in it.
func openAPI(r *gin.Engine) gin.HandlerFunc {
	return func(c *gin.Context) {
		if p, ok := c.Request.Context().Value(routesProbeKey{}).(*routesProbe); ok {
			p.routes = r.Routes()
		}
		c.Data(http.StatusOK, "application/json", openAPIDoc)
	}
}

package httpapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"net/http"
	"sync"

	"github.com/gin-gonic/gin"

	"github.com/cao-run/cao/pkg/registry"
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
func openAPI(r *gin.Engine, reg *registry.Registry) gin.HandlerFunc {
	served := sync.OnceValue(func() []byte { return withFeatureInputs(openAPIDoc, reg) })
	return func(c *gin.Context) {
		if p, ok := c.Request.Context().Value(routesProbeKey{}).(*routesProbe); ok {
			p.routes = r.Routes()
		}
		c.Data(http.StatusOK, "application/json", served())
	}
}

// featureInputsKey is the document's extension that publishes each registered feature's input
// schema (JSON Schema draft 2020-12, as written in the registry), so that clients can validate
// input_data before they POST. An extension, since OpenAPI 3.0's schema objects are not draft
// 2020-12; the same schemas are at GET /api/v1/features.
const featureInputsKey = "x-feature-input-schemas"

// withFeatureInputs returns doc with the featureInputsKey extension appended to its top-level
// object; the document's own bytes are kept as they are. Without a registry, doc itself.
func withFeatureInputs(doc []byte, reg *registry.Registry) []byte {
	if reg == nil {
		return doc
	}
	inputs := map[string]any{}
	for _, name := range reg.FeatureNames() {
		if f := reg.Features[name]; f.Input != nil {
			inputs[name] = f.Input
		} else {
			inputs[name] = map[string]any{"type": "object"}
		}
	}
	ext, err := json.Marshal(inputs)
	trimmed := bytes.TrimRight(doc, " \t\r\n")
	if err != nil || len(trimmed) == 0 || trimmed[len(trimmed)-1] != '}' {
		return doc // cannot happen with the embedded document; serve it unchanged rather than fail
	}
	out := make([]byte, 0, len(trimmed)+len(ext)+len(featureInputsKey)+8)
	out = append(out, trimmed[:len(trimmed)-1]...)
	out = append(out, ",\n  \""+featureInputsKey+"\": "...)
	out = append(out, ext...)
	out = append(out, "\n}\n"...)
	return out
}

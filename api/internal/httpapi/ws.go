package httpapi

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"
)

// wsHub serves /ws/{job_id}. (Being implemented: see issue 6.)
type wsHub struct{ s *Server }

func newWSHub(s *Server) *wsHub { return &wsHub{s: s} }

func (h *wsHub) serve(c *gin.Context) {
	abort(c, http.StatusNotImplemented, "not_implemented", "websocket not implemented yet", nil)
}

func (h *wsHub) stop(ctx context.Context) error { return nil }

package httpapi

import "github.com/gin-gonic/gin"

// registerUI mounts the browser pages. (Being implemented: see issue 6.)
func (s *Server) registerUI(r *gin.Engine) {}

package httpapi

// This file is the WebSocket origin policy and upgrade detection.

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
)

// codeOriginNotAllowed answers a WebSocket upgrade from a browser origin outside CAO_ALLOWED_ORIGINS.
const codeOriginNotAllowed = "origin_not_allowed"

// originPatterns turns CAO_ALLOWED_ORIGINS (full origins such as https://app.example.com) and the
// public URL into scheme://host patterns, so that an http origin does not pass for an https one.
func originPatterns(allowed []string, publicURL string) (patterns []string, anyOrigin bool) {
	for _, o := range append(slices.Clone(allowed), publicURL) {
		if o == "*" {
			anyOrigin = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Host == "" {
			continue
		}
		patterns = append(patterns, strings.ToLower(u.Scheme+"://"+u.Host))
	}
	return patterns, anyOrigin
}

// originAllowed applies the same rule as websocket.Accept (no Origin: not a browser; same host as the
// request; or a pattern match) so that a refusal gets the JSON error envelope before any database work.
func (h *wsHub) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || h.anyOrigin {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	target := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, p := range h.origins {
		if ok, _ := path.Match(p, target); ok {
			return true
		}
	}
	return false
}

// isUpgrade reports whether the request asks for a WebSocket.
func isUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

// handshakeProblem says what is wrong with a WebSocket upgrade request's own headers (empty: nothing),
// checked before websocket.Accept, whose refusals are plain text rather than the error envelope.
func handshakeProblem(r *http.Request) string {
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		return "Sec-WebSocket-Version must be 13"
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.Header.Get("Sec-WebSocket-Key")))
	if err != nil || len(key) != 16 {
		return "Sec-WebSocket-Key must be the base64 of 16 bytes"
	}
	return ""
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

package httpapi

import (
	"encoding/json"
	"log/slog"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrorEnvelope is the body of an error answer, {"success": false, "error": {"code", "message"}}, for
// the places that answer outside Gin: the asynqmon wrapper and the errors net/http writes by itself.
func ErrorEnvelope(code, message string) []byte {
	b, _ := json.Marshal(struct {
		Success bool     `json:"success"`
		Error   apiError `json:"error"`
	}{Error: apiError{Code: code, Message: message}})
	return b
}

// statusErrorCodes name the error codes of answers whose only information is their status.
var statusErrorCodes = map[int]string{
	http.StatusBadRequest:                  "bad_request",
	http.StatusUnauthorized:                "unauthorized",
	http.StatusForbidden:                   "forbidden",
	http.StatusNotFound:                    "not_found",
	http.StatusMethodNotAllowed:            "method_not_allowed",
	http.StatusConflict:                    "conflict",
	http.StatusRequestEntityTooLarge:       "body_too_large",
	http.StatusUnsupportedMediaType:        "unsupported_media_type",
	http.StatusTooManyRequests:             "rate_limited",
	http.StatusRequestHeaderFieldsTooLarge: "headers_too_large",
	http.StatusInternalServerError:         "internal_error",
	http.StatusNotImplemented:              "not_implemented",
	http.StatusServiceUnavailable:          "service_unavailable",
	http.StatusHTTPVersionNotSupported:     "http_version_not_supported",
}

// StatusErrorCode is the envelope's code for an error answer known only by its status: 400
// bad_request, 404 not_found, 405 method_not_allowed, 431 headers_too_large, 500 internal_error, 501
// not_implemented, 505 http_version_not_supported, ...; another 4xx is its status text in snake case,
// another 5xx internal_error.
func StatusErrorCode(status int) string {
	if code, ok := statusErrorCodes[status]; ok {
		return code
	}
	if status >= http.StatusInternalServerError {
		return "internal_error"
	}
	text := http.StatusText(status)
	if text == "" {
		return "bad_request"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		case r == ' ' || r == '-':
			return '_'
		}
		return -1
	}, text)
}

// Limits of what MonitoringErrors keeps of asynqmon's error text.
const (
	// MonitoringErrorMessageMax bounds the message of a 4xx envelope (bytes).
	MonitoringErrorMessageMax = 300
	// monitoringErrorKeep bounds the error text kept for the message and the log.
	monitoringErrorKeep = 2048
	// MonitoringServerErrorMessage is the message of every 5xx envelope: the original, often a Redis
	// error naming addresses, goes to the log only.
	MonitoringServerErrorMessage = "queue monitor error"
)

// networkDetail matches error text that names the network or Redis (addresses, dial errors): such a
// text is never returned, whatever the status.
var networkDetail = regexp.MustCompile(`(?i)\b(dial|tcp|udp|unix|redis|i/o timeout|connection (refused|reset))\b|` +
	`\d{1,3}(\.\d{1,3}){3}(:\d+)?|\[[0-9a-f:]+\](:\d+)?|\blocalhost:\d+|:\d{2,5}\b`)

// MonitoringErrors wraps the asynqmon handler so that its error answers, plain text from http.Error
// (or no body at all), are the API's error envelope: any answer with status >= 400 whose Content-Type
// is not JSON is rewritten with the code of its status (StatusErrorCode). A 4xx keeps asynqmon's text
// as the message (trimmed, at most MonitoringErrorMessageMax bytes, never a network detail); a 5xx
// says MonitoringServerErrorMessage and the original text is logged at warn. Other answers pass
// through untouched and unbuffered.
func MonitoringErrors(h http.Handler, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "monitoring")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mw := &monitoringWriter{ResponseWriter: w}
		h.ServeHTTP(mw, r)
		if mw.failed {
			mw.writeEnvelope(r, log)
		}
	})
}

// monitoringWriter passes an answer through unless it is a non-JSON error, which it holds back.
type monitoringWriter struct {
	http.ResponseWriter
	wroteHeader bool
	failed      bool // a non-JSON error: its body is kept in text and rewritten at the end
	status      int
	text        []byte
}

func (w *monitoringWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < http.StatusOK {
		w.ResponseWriter.WriteHeader(code) // 1xx: informational, more headers follow
		return
	}
	w.wroteHeader = true
	if code >= http.StatusBadRequest && !isJSONContent(w.Header().Get("Content-Type")) {
		w.failed, w.status = true, code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *monitoringWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		if room := monitoringErrorKeep - len(w.text); room > 0 {
			w.text = append(w.text, p[:min(len(p), room)]...)
		}
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// Flush sends what a successful answer wrote so far; an error is sent whole at the end.
func (w *monitoringWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *monitoringWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *monitoringWriter) writeEnvelope(r *http.Request, log *slog.Logger) {
	text := strings.TrimSpace(strings.ToValidUTF8(string(w.text), "\uFFFD"))
	var msg string
	if w.status >= http.StatusInternalServerError {
		log.Warn("queue monitor error", "method", r.Method, "path", r.URL.Path, "status", w.status, "err", text)
		msg = MonitoringServerErrorMessage
	} else {
		msg = monitoringClientMessage(text, w.status)
	}
	body := ErrorEnvelope(StatusErrorCode(w.status), msg)
	h := w.Header()
	h.Del("Content-Encoding")
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.ResponseWriter.WriteHeader(w.status)
	_, _ = w.ResponseWriter.Write(body)
}

// monitoringClientMessage is asynqmon's text of a 4xx: its first line, at most
// MonitoringErrorMessageMax bytes, or the status text when it is empty or names the network.
func monitoringClientMessage(text string, status int) string {
	if i := strings.IndexAny(text, "\r\n"); i >= 0 {
		text = strings.TrimSpace(text[:i])
	}
	if text == "" || networkDetail.MatchString(text) {
		return http.StatusText(status)
	}
	if len(text) > MonitoringErrorMessageMax {
		cut := MonitoringErrorMessageMax
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut]
	}
	return text
}

// isJSONContent reports whether a Content-Type is JSON (application/json or +json).
func isJSONContent(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

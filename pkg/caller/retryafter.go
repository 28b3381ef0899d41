package caller

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxRetryAfter caps the delay a service can ask for.
const MaxRetryAfter = time.Hour

// rateLimitResets pairs the reset headers rate-limited APIs send with the "remaining" header of the
// same budget: when a remaining header says 0, its reset is the one that matters.
var rateLimitResets = []struct{ reset, remaining string }{
	{"X-Ratelimit-Reset", "X-Ratelimit-Remaining"},
	{"X-Rate-Limit-Reset", "X-Rate-Limit-Remaining"},
	{"Ratelimit-Reset", "Ratelimit-Remaining"},
	{"X-Ratelimit-Reset-Requests", "X-Ratelimit-Remaining-Requests"}, // OpenAI, Groq: "6m0s"
	{"X-Ratelimit-Reset-Tokens", "X-Ratelimit-Remaining-Tokens"},
}

// retryAfter returns how long the response asks the client to wait, capped at MaxRetryAfter; 0 when it
// does not say. Retry-After wins; rate-limit reset headers are consulted only when useReset is set,
// since on other statuses they describe a budget that is not what failed.
func retryAfter(h http.Header, now time.Time, useReset bool) time.Duration {
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if d, ok := parseRetryAfter(v, now); ok {
			return capDelay(d)
		}
	}
	if !useReset {
		return 0
	}
	var exhausted, anyReset time.Duration
	for _, rl := range rateLimitResets {
		v := strings.TrimSpace(h.Get(rl.reset))
		if v == "" {
			continue
		}
		d, ok := parseReset(v, now)
		if !ok {
			continue
		}
		anyReset = max(anyReset, d)
		if strings.TrimSpace(h.Get(rl.remaining)) == "0" {
			exhausted = max(exhausted, d)
		}
	}
	if exhausted > 0 {
		return capDelay(exhausted)
	}
	return capDelay(anyReset)
}

// parseRetryAfter reads RFC 9110 Retry-After: delay-seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return seconds(float64(n)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now), true
	}
	return 0, false
}

// parseReset reads a rate-limit reset header: seconds from now ("30", "0.5"), a unix timestamp in
// seconds or milliseconds (large numbers), a Go-style duration ("1s", "6m0s", "20ms") or an HTTP-date.
func parseReset(v string, now time.Time) (time.Duration, bool) {
	if f, err := strconv.ParseFloat(v, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
		switch {
		case f < 0:
			return 0, false
		case f >= 1e12: // unix milliseconds
			return time.UnixMilli(int64(f)).Sub(now), true
		case f >= 1e9: // unix seconds (any date after 2001)
			return time.Unix(int64(f), 0).Sub(now), true
		default:
			return seconds(f), true
		}
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d, d >= 0
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now), true
	}
	return 0, false
}

// seconds converts without overflow; anything past the cap is clamped later anyway.
func seconds(f float64) time.Duration {
	if f > MaxRetryAfter.Seconds() {
		return MaxRetryAfter
	}
	return time.Duration(f * float64(time.Second))
}

// capDelay clamps to [0, MaxRetryAfter]; a date in the past means "now", reported as no delay.
func capDelay(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return 0
	case d > MaxRetryAfter:
		return MaxRetryAfter
	}
	return d
}

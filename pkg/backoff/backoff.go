// Package backoff computes retry and requeue delays.
package backoff

import "time"

// Exponential returns the "full jitter" delay before retry number attempt (1 for the first retry):
// rnd() * min(ceil, initial * 2^(attempt-1)). It never overflows, whatever attempt is.
// rnd returns values in [0, 1), like math/rand.Float64; a nil rnd means no jitter (the full ceiling).
func Exponential(attempt int, initial, ceil time.Duration, rnd func() float64) time.Duration {
	ceiling := Ceiling(attempt, initial, ceil)
	if rnd == nil {
		return ceiling
	}
	return scale(ceiling, clamp01(rnd()))
}

// Ceiling returns min(ceil, initial * 2^(attempt-1)) without overflow; attempt < 1 counts as 1.
func Ceiling(attempt int, initial, ceil time.Duration) time.Duration {
	if initial <= 0 || ceil <= 0 {
		return 0
	}
	if initial >= ceil {
		return ceil
	}
	if attempt < 1 {
		attempt = 1
	}
	d := initial
	for i := 1; i < attempt; i++ {
		// Doubling past ceil/2 would reach ceil anyway (and may overflow), so stop there.
		if d > ceil/2 {
			return ceil
		}
		d *= 2
	}
	if d > ceil {
		return ceil
	}
	return d
}

// Jitter returns d spread uniformly over [d*(1-fraction), d*(1+fraction)], for short requeue delays
// that should not fire in lockstep; fraction is clamped to [0, 1] and the result is never negative.
func Jitter(d time.Duration, fraction float64, rnd func() float64) time.Duration {
	if d <= 0 {
		return 0
	}
	if fraction <= 0 || rnd == nil {
		return d
	}
	if fraction > 1 {
		fraction = 1
	}
	f := clamp01(rnd())
	factor := 1 - fraction + 2*fraction*f
	return scale(d, factor)
}

// scale multiplies d by factor (>= 0), saturating instead of overflowing.
func scale(d time.Duration, factor float64) time.Duration {
	if factor <= 0 || d <= 0 {
		return 0
	}
	r := float64(d) * factor
	if r >= float64(1<<63-1) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(r)
}

func clamp01(f float64) float64 {
	switch {
	case f != f || f < 0: // NaN or negative
		return 0
	case f > 1:
		return 1
	}
	return f
}

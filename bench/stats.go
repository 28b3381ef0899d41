package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// percentile returns the p-th percentile (0 < p <= 100) of samples by the nearest-rank method: the
// smallest sample such that at least p% of the samples are at or below it. It returns 0 for no samples
// and does not modify samples.
func percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(float64(len(s))*p/100 - 1e-9)) // the epsilon keeps exact ranks exact
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// span is one call seen by the fake service: when its handler started and when it answered.
type span struct {
	start, end time.Time
}

// wallTime is the time from the first call's start to the last call's end.
func wallTime(calls []span) time.Duration {
	if len(calls) == 0 {
		return 0
	}
	first, last := calls[0].start, calls[0].end
	for _, c := range calls[1:] {
		if c.start.Before(first) {
			first = c.start
		}
		if c.end.After(last) {
			last = c.end
		}
	}
	return last.Sub(first)
}

// busyPercent is how much of a service's capacity (limit calls at once) the calls used over their
// wall time: the sum of the call durations over limit × wall time, in percent. 100% means every slot
// was busy from the first call's start to the last call's end.
func busyPercent(calls []span, limit int) float64 {
	wall := wallTime(calls)
	if wall <= 0 || limit <= 0 {
		return 0
	}
	var busy time.Duration
	for _, c := range calls {
		busy += c.end.Sub(c.start)
	}
	return 100 * float64(busy) / (float64(limit) * float64(wall))
}

// ratio returns a/b formatted with two decimals, or "n/a" when b is zero.
func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// median returns the median of xs (the mean of the middle two for an even count), 0 for none; xs is
// not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread formats rates measured over rounds: the one rate, or the median with the range.
func spread(rates []float64, unit string) string {
	if len(rates) == 1 {
		return fmtRate(rates[0], unit)
	}
	return fmt.Sprintf("%s (median of %d; %s–%s)", fmtRate(median(rates), unit), len(rates),
		fmtCount(slices.Min(rates)), fmtRate(slices.Max(rates), unit))
}

// ratioSpread formats ratios measured over rounds: each one, then their median.
func ratioSpread(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.2f", r)
	}
	if len(rs) == 1 {
		return parts[0]
	}
	return fmt.Sprintf("%s (median %.2f)", strings.Join(parts, ", "), median(rs))
}

// fmtDur formats a duration for the table with a precision that suits its size.
func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
}

// fmtRate formats events per second with a thousands separator.
func fmtRate(perSec float64, unit string) string { return fmtCount(perSec) + " " + unit }

// fmtCount rounds x to an integer and formats it with a thousands separator.
func fmtCount(x float64) string {
	s := fmt.Sprint(int64(x + 0.5))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// within reports whether the ratio r, as the table shows it (two decimals), meets an upper bound.
func within(r, bound float64) bool { return math.Round(r*100)/100 <= bound }

// verdict is the suffix of a goal cell: met or missed.
func verdict(ok bool) string {
	if ok {
		return " — ok"
	}
	return " — missed"
}

// rampUp is how long the service took to first reach limit calls at once: the limit-th call's start
// minus the first call's start. Every slot still empty meanwhile is capacity lost before any hand-off.
// It returns 0 with fewer than limit calls.
func rampUp(calls []span, limit int) time.Duration {
	if limit <= 0 || len(calls) < limit {
		return 0
	}
	starts := sortedTimes(calls, func(c span) time.Time { return c.start })
	return starts[limit-1].Sub(starts[0])
}

// sortedTimes returns at(c) of every call, earliest first.
func sortedTimes(calls []span, at func(span) time.Time) []time.Time {
	out := make([]time.Time, len(calls))
	for i, c := range calls {
		out[i] = at(c)
	}
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// handOffGaps estimates how long a freed slot stayed idle: with a backlog, the k-th call to end frees
// the slot the (k+limit)-th call to start takes, so each gap is that start minus that end (0 when the
// start came first). It returns nil with limit calls or fewer.
func handOffGaps(calls []span, limit int) []time.Duration {
	if limit <= 0 || len(calls) <= limit {
		return nil
	}
	starts := sortedTimes(calls, func(c span) time.Time { return c.start })
	ends := sortedTimes(calls, func(c span) time.Time { return c.end })
	gaps := make([]time.Duration, 0, len(calls)-limit)
	for k := 0; k+limit < len(starts); k++ {
		gaps = append(gaps, max(0, starts[k+limit].Sub(ends[k])))
	}
	return gaps
}

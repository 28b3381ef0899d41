package main

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // reverse order: percentile must sort
	}
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(5, 1, 3), 50, 3 * time.Millisecond},
		{"median of even takes the lower", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"tiny p is the min", ms(hundred...), 0.1, 1 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := percentile(tc.samples, tc.p); got != tc.want {
				t.Fatalf("percentile(%v, %v) = %v, want %v", tc.samples, tc.p, got, tc.want)
			}
		})
	}
}

func TestPercentileKeepsInput(t *testing.T) {
	t.Parallel()
	in := []time.Duration{3, 1, 2}
	_ = percentile(in, 50)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Fatalf("percentile reordered its input: %v", in)
	}
}

func TestBusyPercent(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(startMs, endMs int) span {
		return span{t0.Add(time.Duration(startMs) * time.Millisecond), t0.Add(time.Duration(endMs) * time.Millisecond)}
	}
	for _, tc := range []struct {
		name     string
		calls    []span
		limit    int
		want     float64
		wantWall time.Duration
	}{
		{"none", nil, 8, 0, 0},
		{"two slots always busy", []span{at(0, 100), at(0, 100), at(100, 200), at(100, 200)}, 2, 100, 200 * time.Millisecond},
		{"one slot idle half the time", []span{at(0, 100), at(0, 100), at(100, 200)}, 2, 75, 200 * time.Millisecond},
		{"gap between calls", []span{at(0, 100), at(300, 400)}, 1, 50, 400 * time.Millisecond},
		{"unordered input", []span{at(300, 400), at(0, 100)}, 1, 50, 400 * time.Millisecond},
		{"zero limit", []span{at(0, 100)}, 0, 0, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := wallTime(tc.calls); got != tc.wantWall {
				t.Fatalf("wallTime = %v, want %v", got, tc.wantWall)
			}
			if got := busyPercent(tc.calls, tc.limit); math.Abs(got-tc.want) > 1e-9 {
				t.Fatalf("busyPercent = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFormatting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ got, want string }{
		{fmtRate(1234567.4, "steps/s"), "1,234,567 steps/s"},
		{fmtRate(999.6, "req/s"), "1,000 req/s"},
		{fmtRate(12, "ops/s"), "12 ops/s"},
		{fmtDur(1500 * time.Microsecond), "1.50 ms"},
		{fmtDur(25 * time.Millisecond), "25.0 ms"},
		{fmtDur(3750 * time.Millisecond), "3.75 s"},
		{ratio(3, 2), "1.50"},
		{ratio(1, 0), "n/a"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestWithin(t *testing.T) {
	t.Parallel()
	if !within(1.502, 1.5) || within(1.506, 1.5) || !within(0.3, 1.1) {
		t.Fatal("within must compare the ratio as the table shows it, with two decimals")
	}
}

func TestHandOffGaps(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Two slots: calls 0-100 and 0-100, then 105-205 and 100-200 (one gap of 5 ms, one of 0).
	calls := []span{{at(0), at(100)}, {at(0), at(100)}, {at(105), at(205)}, {at(100), at(200)}}
	if got := handOffGaps(calls, 2); !slices.Equal(got, []time.Duration{0, 5 * time.Millisecond}) {
		t.Fatalf("gaps %v, want [0 5ms]", got)
	}
	if got := handOffGaps(calls[:2], 2); got != nil {
		t.Fatalf("gaps of limit calls: %v, want none", got)
	}
}

func TestRampUp(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	calls := []span{{at(30), at(130)}, {at(10), at(110)}, {at(120), at(220)}}
	if got := rampUp(calls, 2); got != 20*time.Millisecond {
		t.Fatalf("ramp %v, want 20ms", got)
	}
	if got := rampUp(calls, 4); got != 0 {
		t.Fatalf("ramp with fewer calls than the limit: %v, want 0", got)
	}
}

func TestMedianAndSpread(t *testing.T) {
	t.Parallel()
	if got := median(nil); got != 0 {
		t.Errorf("median(nil) = %v", got)
	}
	in := []float64{3, 1, 2}
	if got := median(in); got != 2 || in[0] != 3 {
		t.Errorf("median(3, 1, 2) = %v (input now %v)", got, in)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median(4, 1, 2, 3) = %v", got)
	}
	if got := spread([]float64{1234.4}, "steps/s"); got != "1,234 steps/s" {
		t.Errorf("one rate: %q", got)
	}
	if got := spread([]float64{1500, 1000, 2000}, "steps/s"); got != "1,500 steps/s (median of 3; 1,000–2,000 steps/s)" {
		t.Errorf("three rates: %q", got)
	}
	if got := ratioSpread([]float64{0.9, 1.1, 1.0}); got != "0.90, 1.10, 1.00 (median 1.00)" {
		t.Errorf("ratios: %q", got)
	}
}

func TestScalingRows(t *testing.T) {
	t.Parallel()
	if rows := scalingRows([]int{1}, []map[int]float64{{1: 100}}, nil); rows != nil {
		t.Errorf("one worker count has no scaling row: %v", rows)
	}
	rounds := []map[int]float64{
		{1: 100, 2: 110, 4: 90},
		{1: 200, 2: 180, 4: 210},
		{1: 100, 4: 100}, // the 2-worker run failed in this round
	}
	floors := []map[int]float64{
		{1: 1000, 2: 900, 4: 800},
		{1: 1000, 2: 1000, 4: 700},
		{}, // the floors failed in this round
	}
	rows := scalingRows([]int{1, 2, 4}, rounds, floors)
	if len(rows) != 2 {
		t.Fatalf("rows: %v", rows)
	}
	if rows[0].cao != "1.10, 0.90 (median 1.00)" || rows[0].ratio != "1.00" || !strings.HasSuffix(rows[0].goal, "ok") {
		t.Errorf("2 workers: %+v", rows[0])
	}
	if rows[1].cao != "0.90, 1.05, 1.00 (median 1.00)" || !strings.Contains(rows[1].scenario, "3 round(s)") {
		t.Errorf("4 workers: %+v", rows[1])
	}
	if rows[0].floor != "0.90, 1.00 (median 0.95) (raw asynq in 2 ÷ 1 worker process(es))" || !strings.HasPrefix(rows[1].floor, "0.80, 0.70 (median 0.75)") {
		t.Errorf("floors: %q, %q", rows[0].floor, rows[1].floor)
	}
	falls := scalingRows([]int{1, 4}, []map[int]float64{{1: 100, 4: 90}}, nil)
	if falls[0].ratio != "0.90" || !strings.HasSuffix(falls[0].goal, "missed") || falls[0].floor != "—" {
		t.Errorf("a fall is missed: %+v", falls[0])
	}
}

func TestPooledRow(t *testing.T) {
	t.Parallel()
	rounds := []map[int]float64{
		{1: 100, 4: 80, pooledRun: 120},
		{1: 100, 4: 90, pooledRun: 135},
		{1: 100, 4: 100}, // the pooled run failed in this round
	}
	rows := pooledRow(1, 4, 50, rounds, nil)
	if len(rows) != 1 {
		t.Fatalf("rows: %v", rows)
	}
	r := rows[0]
	if r.cao != "÷ 1 × 50: 1.20, 1.35 (median 1.27); ÷ 4 × 50: 1.50, 1.50 (median 1.50)" || r.ratio != "1.50" {
		t.Errorf("ratios: %+v", r)
	}
	if !strings.Contains(r.scenario, "1 worker × 200 (the handlers of 4 × 50 in one process)") {
		t.Errorf("scenario: %q", r.scenario)
	}
	if rows := pooledRow(1, 4, 50, []map[int]float64{{1: 100, 4: 100}}, nil); rows != nil {
		t.Errorf("no pooled run, no error: no row: %v", rows)
	}
	failed := pooledRow(1, 4, 50, []map[int]float64{{1: 100, 4: 100}}, errors.New("boom"))
	if len(failed) != 1 || !strings.Contains(failed[0].cao, "boom") {
		t.Errorf("a failed pooled run is shown: %+v", failed)
	}
}

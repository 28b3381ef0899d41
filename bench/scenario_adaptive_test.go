package main

import (
	"math"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestAnalyseAdaptive(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var calls []statusSpan
	add := func(at time.Duration, status int) {
		calls = append(calls, statusSpan{span: span{start: t0.Add(at), end: t0.Add(at + 100*time.Millisecond)}, status: status})
	}
	// Window 0 (0-2 s): 20 calls, 10 refused. Windows 1-3: 20 calls each, one refused in window 2.
	for i := range 80 {
		at := time.Duration(i) * 100 * time.Millisecond
		status := http.StatusOK
		if (i < 20 && i%2 == 0) || i == 50 {
			status = http.StatusTooManyRequests
		}
		add(at, status)
	}
	limits := []limitSample{
		{at: t0, limit: 0}, // no state yet: max_concurrency
		{at: t0.Add(time.Second), limit: 6},
		{at: t0.Add(1500 * time.Millisecond), limit: 3},
		{at: t0.Add(2 * time.Second), limit: 3},
		{at: t0.Add(5 * time.Second), limit: 4},
		{at: t0.Add(6 * time.Second), limit: 4},
		{at: t0.Add(9 * time.Second), limit: 3},
	}
	s := analyseAdaptive(adaptiveResult{calls: calls}, limits)
	if s.calls != 80 || s.refused != 11 || s.before429 != 10 {
		t.Fatalf("counts: %+v", s)
	}
	if s.converged != 2*time.Second {
		t.Fatalf("converged after %s, want 2s (the first window under 5%%)", s.converged)
	}
	if want := 1.0 / 60; math.Abs(s.after429-want) > 1e-9 {
		t.Fatalf("after429 = %f, want %f", s.after429, want)
	}
	if s.wall != 8*time.Second {
		t.Fatalf("wall %s", s.wall)
	}
	// 59 successes after convergence; 95% of them (56) ended by the 56th one's end, 7.7 s (call 76).
	if want := 56 / 5.7; math.Abs(s.steadyRate-want) > 0.01 {
		t.Fatalf("steady rate %f, want %f", s.steadyRate, want)
	}
	if s.limitReached != 1500*time.Millisecond {
		t.Fatalf("limit reached after %s", s.limitReached)
	}
	// After convergence (2 s) until the last end (8 s): 3 for 3 s, 4 for 1 s, then 4 until the
	// sample at 9 s; samples after the last call's end do not count.
	if want := (3.0*3 + 4*1 + 4*3) / 7; math.Abs(s.meanLimit-want) > 1e-9 {
		t.Fatalf("mean limit %f, want %f", s.meanLimit, want)
	}
	if got := s.String(); !strings.Contains(got, "converged in 2.00 s") || !strings.Contains(got, "mean 3.57") {
		t.Fatalf("String() = %q", got)
	}
	if len(s.timeline) != 5 || s.timeline[0] != 10 || s.timeline[2] != 1 {
		t.Fatalf("timeline %v", s.timeline)
	}

	// A hand-set run: no 429, converged from the start.
	base := analyseAdaptive(adaptiveResult{calls: calls[20:]}, nil)
	if base.converged != 0 || base.before429 != 0 || base.limitReached != -1 || base.meanLimit != 0 {
		t.Fatalf("baseline %+v", base)
	}
}

func TestAdaptiveRegistryYAML(t *testing.T) {
	t.Parallel()
	y := adaptiveRegistryYAML("http://127.0.0.1:1", 12, true)
	for _, want := range []string{"max_concurrency: 12", "adaptive: {min: 1}", "service: capped", featureOne + ":"} {
		if !strings.Contains(y, want) {
			t.Errorf("registry lacks %q:\n%s", want, y)
		}
	}
	if strings.Contains(adaptiveRegistryYAML("http://127.0.0.1:1", 3, false), "adaptive") {
		t.Error("the hand-set registry is adaptive")
	}
}

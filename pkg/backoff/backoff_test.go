package backoff

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func fixed(f float64) func() float64 { return func() float64 { return f } }

func TestExponential(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		attempt int
		initial time.Duration
		max     time.Duration
		rnd     func() float64
		want    time.Duration
	}{
		{"first attempt full", 1, time.Second, time.Minute, fixed(1), time.Second},
		{"second doubles", 2, time.Second, time.Minute, fixed(1), 2 * time.Second},
		{"third", 3, time.Second, time.Minute, fixed(1), 4 * time.Second},
		{"capped at max", 10, time.Second, time.Minute, fixed(1), time.Minute},
		{"half jitter", 3, time.Second, time.Minute, fixed(0.5), 2 * time.Second},
		{"zero jitter", 5, time.Second, time.Minute, fixed(0), 0},
		{"huge attempt no overflow", math.MaxInt, time.Second, time.Hour, fixed(1), time.Hour},
		{"huge attempt max duration", 1000, time.Nanosecond, time.Duration(math.MaxInt64), fixed(1), time.Duration(math.MaxInt64)},
		{"attempt zero counts as one", 0, time.Second, time.Minute, fixed(1), time.Second},
		{"negative attempt counts as one", -3, time.Second, time.Minute, fixed(1), time.Second},
		{"initial above max", 1, time.Hour, time.Minute, fixed(1), time.Minute},
		{"zero initial", 3, 0, time.Minute, fixed(1), 0},
		{"nil rnd is ceiling", 2, time.Second, time.Minute, nil, 2 * time.Second},
		{"rnd above one clamps", 2, time.Second, time.Minute, fixed(7), 2 * time.Second},
		{"rnd NaN clamps", 2, time.Second, time.Minute, fixed(math.NaN()), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Exponential(tt.attempt, tt.initial, tt.max, tt.rnd))
		})
	}
}

func TestExponentialWithinBounds(t *testing.T) {
	t.Parallel()

	for attempt := 1; attempt < 200; attempt++ {
		for _, f := range []float64{0, 0.1, 0.5, 0.999999} {
			d := Exponential(attempt, 100*time.Millisecond, 2*time.Minute, fixed(f))
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.LessOrEqual(t, d, 2*time.Minute)
		}
	}
}

func TestCeilingMonotonic(t *testing.T) {
	t.Parallel()

	prev := time.Duration(0)
	for attempt := 1; attempt < 100; attempt++ {
		c := Ceiling(attempt, 3*time.Millisecond, 90*time.Second)
		require.GreaterOrEqual(t, c, prev)
		prev = c
	}
	require.Equal(t, 90*time.Second, prev)
}

func TestJitter(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		d        time.Duration
		fraction float64
		rnd      func() float64
		want     time.Duration
	}{
		{"low end", time.Second, 0.2, fixed(0), 800 * time.Millisecond},
		{"middle", time.Second, 0.2, fixed(0.5), time.Second},
		{"high end", time.Second, 0.2, fixed(1), 1200 * time.Millisecond},
		{"no fraction", time.Second, 0, fixed(0), time.Second},
		{"nil rnd", time.Second, 0.5, nil, time.Second},
		{"fraction clamped to one", time.Second, 3, fixed(0), 0},
		{"zero duration", 0, 0.5, fixed(1), 0},
		{"negative duration", -time.Second, 0.5, fixed(1), 0},
		{"max duration saturates", time.Duration(math.MaxInt64), 0.5, fixed(1), time.Duration(math.MaxInt64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Jitter(tt.d, tt.fraction, tt.rnd))
		})
	}
}

package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	t.Parallel()
	// utime 250 and stime 50 ticks; the command name has a space and a parenthesis in it.
	stat := "4242 (cao worker) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 12 0 100 1 1 1"
	got, err := parseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want {
		t.Fatalf("parseStatCPU = %v, want %v", got, want)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Fatal("parseStatCPU accepted garbage")
	}
	if _, err := procCPUTime("self"); err != nil {
		t.Fatalf("procCPUTime(self): %v", err)
	}
	// cutime 100 and cstime 100 ticks: the children it reaped.
	stat = "4242 (postgres) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 100 100 20 0 12 0 100 1 1 1"
	if got, err := parseStatChildrenCPU(stat); err != nil || got != 2*time.Second {
		t.Fatalf("parseStatChildrenCPU = %v, %v, want 2s", got, err)
	}
}

func TestCommCPUTime(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	// Spin until the kernel has charged this process a tick, so that its sum cannot be zero.
	for {
		own, err := procCPUTime("self")
		if err != nil {
			t.Fatal(err)
		}
		if own > 0 {
			break
		}
	}
	got, err := commCPUTime(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if got <= 0 {
		t.Fatalf("commCPUTime(%q) = %v, want the test binary's CPU at least", strings.TrimSpace(string(b)), got)
	}
	if got, err := commCPUTime("no such command"); err != nil || got != 0 {
		t.Fatalf("commCPUTime of no process = %v, %v, want 0", got, err)
	}
}

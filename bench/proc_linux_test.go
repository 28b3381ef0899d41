package main

import (
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
}

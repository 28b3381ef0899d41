package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{"-src", "/tmp/x", "-workers", "1, 3", "-run", "post,history", "-post-duration", "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if o.src != "/tmp/x" || !slices.Equal(o.workers, []int{1, 3}) || o.postDuration != 2*time.Second {
		t.Fatalf("parsed %+v", o)
	}
	if !o.history || !selected(o, "history") || !selected(o, "post") || selected(o, "chain") {
		t.Fatalf("-run post,history selects the wrong scenarios: %+v", o.run)
	}
	def, err := parseFlags([]string{"-src", "/tmp/x"})
	if err != nil {
		t.Fatal(err)
	}
	if !selected(def, "chain") || selected(def, "history") {
		t.Fatal("by default every scenario but history runs")
	}
	for _, bad := range [][]string{
		{"-src", "/tmp/x", "-workers", "0"},
		{"-src", "/tmp/x", "-rounds", "0"},
		{"-src", "/tmp/x", "-concurrency", "0"},
		{"-src", "/tmp/x", "-run", "nope"},
		{"-src", "/tmp/x", "-redis-db", "3", "-floor-redis-db", "3"},
		{"-src", "/tmp/x", "extra"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted bad flags", bad)
		}
	}
}

func TestErrCell(t *testing.T) {
	t.Parallel()
	got := errCell(errors.New("a | b\nsecond line"))
	if got != "ERROR: a / b" {
		t.Fatalf("errCell = %q", got)
	}
	long := errCell(errors.New(strings.Repeat("é", 300)))
	if n := len([]rune(long)); n != len("ERROR: ")+161 {
		t.Fatalf("errCell kept %d runes", n)
	}
}

func TestRegistryYAML(t *testing.T) {
	t.Parallel()
	y := registryYAML("http://127.0.0.1:1", 8)
	for _, want := range []string{"kind: http", "max_concurrency: 8", "needs: [s4]", featureOne + ":", featureSingle + ":"} {
		if !strings.Contains(y, want) {
			t.Errorf("registry lacks %q:\n%s", want, y)
		}
	}
	if y := registryYAML("", 0); strings.Contains(y, "capped") {
		t.Errorf("registry without a fake service has one:\n%s", y)
	}
}

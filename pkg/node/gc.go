package node

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
)

// DefaultGCPercent is the garbage collector's target at which CAO's processes run unless GOGC is set:
// twice the Go runtime's default. A worker allocates for every step (rows, JSON, events), and at the
// runtime's default it spent 13-16 % of its CPU collecting. At 200 the chain's worker used 13 % less
// CPU per step for a larger heap (docs/benchmarks.md, session 9). GOMEMLIMIT, which the Kubernetes
// manifests set from the container's memory limit, still bounds the heap: near it, the collector
// runs as often as it must.
const DefaultGCPercent = 200

// TuneGC sets the collector's target to DefaultGCPercent unless the environment (lookup) sets GOGC,
// which then keeps its meaning. It returns the target in effect (-1: off).
func TuneGC(lookup func(string) (string, bool)) int {
	if _, ok := lookup("GOGC"); ok {
		sample := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(sample)
		v := sample[0].Value.Uint64()
		if v > math.MaxInt32 {
			return -1 // GOGC=off (read as -1 in a uint64), as debug.SetGCPercent reports it
		}
		return int(v)
	}
	debug.SetGCPercent(DefaultGCPercent)
	return DefaultGCPercent
}

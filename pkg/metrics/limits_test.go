package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
)

func TestLimitCollector(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewLimitCollector(func() map[string]metrics.ServiceLimits {
		return map[string]metrics.ServiceLimits{"llm": {Effective: 3, Hold: 1500 * time.Millisecond}, "sim": {Effective: 4}}
	}))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP cao_service_effective_limit Fleet-wide concurrency limit calls are admitted under now, by service: max_concurrency, or the adaptive (AIMD) limit (0: unlimited).
# TYPE cao_service_effective_limit gauge
cao_service_effective_limit{service="llm"} 3
cao_service_effective_limit{service="sim"} 4
# HELP cao_service_hold_seconds Seconds calls to the service still wait because the provider said its rate-limit budget was spent (0: none), by service.
# TYPE cao_service_hold_seconds gauge
cao_service_hold_seconds{service="llm"} 1.5
cao_service_hold_seconds{service="sim"} 0
`)))
}

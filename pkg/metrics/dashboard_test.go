package metrics_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/runner"
	"github.com/cao-run/cao/pkg/store"
)

type dashboard struct {
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name, Type string
			Query      any
		}
	}
	Panels []struct {
		Type, Title string
		Datasource  *struct{ Type, UID string }
		Targets     []struct {
			Expr       string
			Datasource *struct{ Type, UID string }
		}
	}
}

// TestGrafanaDashboard checks deploy/grafana/cao-dashboard.json: valid JSON with a schema version,
// the Prometheus data source a variable of every panel and query, every metric it queries one that
// CAO exports, and every metric CAO exports on it.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.FromSlash("../../deploy/grafana/cao-dashboard.json"))
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(data, &d))
	require.Positive(t, d.SchemaVersion)
	require.NotEmpty(t, d.UID)
	require.NotEmpty(t, d.Templating.List)
	require.Equal(t, "datasource", d.Templating.List[0].Name)
	require.Equal(t, "datasource", d.Templating.List[0].Type)
	require.Equal(t, "prometheus", d.Templating.List[0].Query)

	// Every CAO family, each with a series, as a scrape of the processes shows them together.
	m := metrics.New(func() float64 { return 0 })
	m.Registry.MustRegister(metrics.NewLeaseCollector(func() map[string][2]int { return map[string][2]int{"llm": {0, 1}} }))
	done := time.Now()
	m.JobsCreated.WithLabelValues("f").Inc()
	m.ObserveJobFinished(store.Job{FeatureName: "f", Status: store.JobCompleted, CreatedAt: done, FinishedAt: &done})
	m.ObserveAttempt("llm", orchestrator.Outcome{}, 0)
	m.ObserveWait("llm", runner.WaitSlot, 0)
	m.Busy.WithLabelValues("llm").Inc()
	m.StepTasks.WithLabelValues(runner.ViaBell).Inc()
	m.QueueDepth.WithLabelValues("default", "pending").Set(0)
	m.RateLimited.WithLabelValues("api").Inc()
	mfs, err := m.Registry.Gather()
	require.NoError(t, err)
	exported := map[string]bool{} // names a query may use
	var families []string
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "cao_") {
			continue
		}
		families = append(families, name)
		exported[name] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				exported[name+suffix] = true
			}
		}
	}

	metricName := regexp.MustCompile(`\bcao_[a-z_]+`)
	used := map[string]bool{}
	graphs := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		graphs++
		require.NotNil(t, p.Datasource, p.Title)
		require.Equal(t, "${datasource}", p.Datasource.UID, p.Title)
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			require.NotNil(t, tg.Datasource, p.Title)
			require.Equal(t, "${datasource}", tg.Datasource.UID, p.Title)
			names := metricName.FindAllString(tg.Expr, -1)
			require.NotEmpty(t, names, "%s: %s", p.Title, tg.Expr)
			for _, n := range names {
				require.True(t, exported[n], "%s: %s is not a metric CAO exports", p.Title, n)
				used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
			}
		}
	}
	require.Positive(t, graphs)
	for _, f := range families {
		require.True(t, used[f], "metric %s is on no panel of the dashboard", f)
	}
}

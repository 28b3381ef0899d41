package devmode

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

// deployFile is the path of a file of the repository's deploy directory.
func deployFile(name string) string { return filepath.Join("..", "..", "..", "deploy", name) }

func parseRegistry(t *testing.T, path string, env map[string]string) (*registry.Registry, error) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return registry.Parse(path, data, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
}

// businessPlanDAG is the shape both registries give business_plan: step -> needs.
var businessPlanDAG = map[string][]string{
	"market_research": nil,
	"financials":      {"market_research"},
	"competitors":     {"market_research"},
	"marketing":       {"competitors"},
	"summary":         {"financials", "marketing"},
}

func requireBusinessPlan(t *testing.T, reg *registry.Registry) *registry.Feature {
	t.Helper()
	f, ok := reg.Feature("business_plan")
	require.True(t, ok, "business_plan feature")
	names := make([]string, len(f.Steps))
	for i, s := range f.Steps {
		names[i] = s.Name
		require.ElementsMatch(t, businessPlanDAG[s.Name], s.Needs, "needs of %s", s.Name)
	}
	require.Equal(t, []string{"market_research", "financials", "competitors", "marketing", "summary"}, names)
	require.Equal(t, []string{"default", "heavy", "medium"}, reg.Queues())

	// The walkthrough's input passes; a missing or empty business_name does not.
	require.Empty(t, f.Input.Validate(map[string]any{"business_name": "AI Toys"}))
	require.NotEmpty(t, f.Input.Validate(map[string]any{}))
	require.NotEmpty(t, f.Input.Validate(map[string]any{"business_name": ""}))
	return f
}

func TestDefaultRegistry(t *testing.T) {
	t.Parallel()
	reg, err := parseRegistry(t, deployFile("registry.yaml"), nil)
	require.NoError(t, err, "the default registry needs no environment")
	f := requireBusinessPlan(t, reg)

	for _, svc := range reg.Services {
		require.Equal(t, registry.KindMock, svc.Kind, "service %s: the default registry needs no network", svc.Name)
	}
	llm, _ := reg.Service("llm")
	require.Equal(t, 4, llm.MaxConcurrency)
	require.Equal(t, 1500*time.Millisecond, llm.Mock.Latency)
	mr, _ := f.Step("market_research")
	require.Equal(t, "llm", mr.Service)
	require.Equal(t, "heavy", mr.Queue)

	require.ElementsMatch(t, []string{"business_plan", "echo", "flaky", "fan_out"}, reg.FeatureNames())
	flaky, _ := reg.Feature("flaky")
	require.Equal(t, 2, flaky.Steps[0].Mock.FailTimes)
	require.Greater(t, flaky.Steps[0].Retry.MaxAttempts, 2, "flaky must succeed within its retries")
}

func TestOpenAIRegistry(t *testing.T) {
	t.Parallel()
	env := map[string]string{"OPENAI_API_KEY": "sk-test-0123456789"}
	reg, err := parseRegistry(t, deployFile("registry.openai.yaml"), env)
	require.NoError(t, err)
	f := requireBusinessPlan(t, reg)

	svc, ok := reg.Service("openai")
	require.True(t, ok)
	require.Equal(t, registry.KindHTTP, svc.Kind)
	require.Equal(t, "https://api.openai.com/v1", svc.BaseURL)
	require.Equal(t, "Bearer sk-test-0123456789", svc.Headers["Authorization"])
	require.NotContains(t, svc.Redact("key sk-test-0123456789"), "sk-test", "the key is a secret")
	require.NotNil(t, svc.Health)

	// Every step posts to /chat/completions; later ones quote earlier answers.
	outputs := map[string]any{}
	for _, s := range f.Steps {
		require.Equal(t, "openai", s.Service)
		require.Equal(t, "POST", s.Request.Method)
		require.Equal(t, "/chat/completions", s.Request.Path)
		body, err := s.Request.BodyTemplate.Execute(render.Data{
			Input: map[string]any{"business_name": "AI Toys"}, Steps: outputs, StepName: s.Name, Attempt: 1, Run: 1,
		})
		require.NoError(t, err, "render body of %s", s.Name)
		b := body.(map[string]any)
		require.Equal(t, "gpt-4o-mini", b["model"])
		msgs := b["messages"].([]any)
		prompt := msgs[len(msgs)-1].(map[string]any)["content"].(string)
		require.Contains(t, prompt, "AI Toys")
		for _, dep := range s.Needs {
			require.Contains(t, prompt, "answer of "+dep, "%s quotes %s", s.Name, dep)
		}
		outputs[s.Name] = map[string]any{"choices": []any{map[string]any{"message": map[string]any{"content": "answer of " + s.Name}}}}
	}

	// The endpoint and the model come from the environment.
	env["OPENAI_BASE_URL"] = "http://127.0.0.1:11434/v1"
	env["OPENAI_MODEL"] = "llama3.2"
	reg, err = parseRegistry(t, deployFile("registry.openai.yaml"), env)
	require.NoError(t, err)
	svc, _ = reg.Service("openai")
	require.Equal(t, "http://127.0.0.1:11434/v1", svc.BaseURL)
	f, _ = reg.Feature("business_plan")
	require.Equal(t, "llama3.2", f.Steps[0].Request.Body.(map[string]any)["model"])

	// Without a key it does not load, and says which variable is missing.
	_, err = parseRegistry(t, deployFile("registry.openai.yaml"), nil)
	require.ErrorContains(t, err, "OPENAI_API_KEY")
}

func TestTestdataRegistry(t *testing.T) {
	t.Parallel()
	reg, err := parseRegistry(t, filepath.Join("testdata", "registry.yaml"), nil)
	require.NoError(t, err)
	_, ok := reg.Feature("slow_chain")
	require.True(t, ok)
}

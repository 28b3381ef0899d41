package deploycheck

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"

	"github.com/cao-run/cao/pkg/config"
	"github.com/cao-run/cao/pkg/metrics"
	"github.com/cao-run/cao/pkg/registry"
)

var update = flag.Bool("update", false, "rewrite deploy/k8s/registry-configmap.yaml from the registries in deploy/")

// knownKinds are the object kinds deploy/k8s may use, with their apiVersion.
var knownKinds = map[string]string{
	"Namespace":               "v1",
	"ServiceAccount":          "v1",
	"ConfigMap":               "v1",
	"Secret":                  "v1",
	"Service":                 "v1",
	"Deployment":              "apps/v1",
	"Job":                     "batch/v1",
	"PodDisruptionBudget":     "policy/v1",
	"HorizontalPodAutoscaler": "autoscaling/v2",
	"ScaledObject":            "keda.sh/v1alpha1",
	"TriggerAuthentication":   "keda.sh/v1alpha1",
}

// The binaries' images, as the manifests name them (the kustomization sets registry and tag).
const (
	apiImage    = "cao-api"
	workerImage = "cao-worker"
)

// The registry ConfigMap: its keys are the registries of deploy/ of the same names.
const (
	registryConfigMap     = "cao-registry"
	registryConfigMapFile = k8sDir + "/registry-configmap.yaml"
)

var registryKeys = []string{"registry.yaml", "registry.openai.yaml"}

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func TestManifestKindsAndNames(t *testing.T) {
	m := loadManifests(t)
	seen := map[string]string{}
	for _, o := range m.objs {
		want, ok := knownKinds[o.kind()]
		switch {
		case !ok:
			t.Errorf("%s: unknown kind %q (known: %s)", o.file, o.kind(), strings.Join(sortedKeys(knownKinds), ", "))
		case o.apiVersion() != want:
			t.Errorf("%s: apiVersion %q, want %q", o, o.apiVersion(), want)
		}
		if !dns1123.MatchString(o.name()) || len(o.name()) > 63 {
			t.Errorf("%s: metadata.name %q is not a DNS-1123 label", o.file, o.name())
		}
		if ns := str(o.doc, "metadata", "namespace"); ns != "" {
			t.Errorf("%s: sets metadata.namespace %q; the kustomization sets the namespace", o, ns)
		}
		key := o.kind() + "/" + o.name()
		if prev, dup := seen[key]; dup {
			t.Errorf("%s: %s is also defined in %s", o.file, key, prev)
		}
		seen[key] = o.file
	}
}

func TestKustomizationsListEveryManifest(t *testing.T) {
	m := loadManifests(t)
	main, ok := m.kustomizations[k8sDir]
	if !ok {
		t.Fatalf("%s/kustomization.yaml is missing", k8sDir)
	}
	for dir := range m.yamlFiles {
		if _, ok := m.kustomizations[dir]; !ok {
			t.Errorf("%s holds manifests but no kustomization.yaml", dir)
		}
	}
	for _, dir := range sortedKeys(m.kustomizations) {
		k := m.kustomizations[dir]
		wantKind, wantVersion := "Component", "kustomize.config.k8s.io/v1alpha1"
		if dir == k8sDir {
			wantKind, wantVersion = "Kustomization", "kustomize.config.k8s.io/v1beta1"
		}
		if str(k, "kind") != wantKind || str(k, "apiVersion") != wantVersion {
			t.Errorf("%s/kustomization.yaml: %s %s, want %s %s", dir, str(k, "apiVersion"), str(k, "kind"), wantVersion, wantKind)
		}
		resources := scalars(listAt(k, "resources"))
		for _, r := range resources {
			if _, err := os.Stat(repoPath(path.Join(dir, r))); err != nil {
				t.Errorf("%s/kustomization.yaml: resource %s: %v", dir, r, err)
			}
		}
		for _, f := range m.yamlFiles[dir] {
			if !slices.Contains(resources, f) {
				t.Errorf("%s/%s is not listed in %s/kustomization.yaml's resources", dir, f, dir)
			}
		}
		for _, c := range scalars(listAt(k, "components")) {
			ck, ok := m.kustomizations[path.Join(dir, c)]
			if !ok || str(ck, "kind") != "Component" {
				t.Errorf("%s/kustomization.yaml: component %s is not a directory with a Component kustomization", dir, c)
			}
		}
	}
	if ns := str(main, "namespace"); ns == "" {
		t.Errorf("%s/kustomization.yaml sets no namespace", k8sDir)
	}
	// Exactly one worker autoscaler: two on one Deployment fight over its replica count.
	var scalers []string
	for _, c := range scalars(listAt(main, "components")) {
		if strings.HasPrefix(c, "autoscaling/") {
			scalers = append(scalers, c)
		}
	}
	if len(scalers) != 1 {
		t.Errorf("%s/kustomization.yaml: components list %d autoscaling alternatives %v, want exactly one", k8sDir, len(scalers), scalers)
	}
	for _, alt := range []string{"autoscaling/keda", "autoscaling/hpa"} {
		if k, ok := m.kustomizations[path.Join(k8sDir, alt)]; !ok || str(k, "kind") != "Component" {
			t.Errorf("%s/%s: want a kustomize Component", k8sDir, alt)
		}
	}
	// One place sets the images' registry and tag: the kustomization's images; the manifests name
	// only the image, and the API and the migration Job share one (one tag for both).
	images := map[string]bool{}
	for _, img := range listAt(main, "images") {
		images[str(img, "name")] = true
	}
	usedBy := map[string][]string{}
	for _, w := range m.workloads() {
		for _, c := range w.containers() {
			if str(c, "image") != imageName(c) {
				t.Errorf("%s: container %s: image %q carries a tag or digest; set it in the kustomization's images", w, str(c, "name"), str(c, "image"))
			}
			if !images[imageName(c)] {
				t.Errorf("%s: container %s: image %q has no entry in %s/kustomization.yaml's images", w, str(c, "name"), imageName(c), k8sDir)
			}
			usedBy[imageName(c)] = append(usedBy[imageName(c)], w.kind())
		}
	}
	if !slices.Contains(usedBy[apiImage], "Deployment") || !slices.Contains(usedBy[apiImage], "Job") {
		t.Errorf("the API Deployment and the migration Job must both run image %s (one tag for both); got %v", apiImage, usedBy)
	}
}

// loaderVariables is every CAO_* name the config loader reads, from its source, plus the client's
// CAO_URL and CAO_API_KEY (read by cao-api jobs).
func loaderVariables(t *testing.T) map[string]bool {
	t.Helper()
	src := readRepoFile(t, "pkg/config/config.go")
	out := map[string]bool{"CAO_URL": true, "CAO_API_KEY": true}
	for _, m := range regexp.MustCompile(`"(CAO_[A-Z0-9_]+)"`).FindAllSubmatch(src, -1) {
		out[string(m[1])] = true
	}
	for _, must := range []string{"CAO_DATABASE_URL", "CAO_WORKER_QUEUES", "CAO_METRICS_ADDR", "CAO_HTTP_ADDR"} {
		if !out[must] {
			t.Fatalf("pkg/config/config.go no longer reads %s as a literal: this test's scan is out of date", must)
		}
	}
	return out
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// composeEnv is a Compose service's environment (map or list form).
func composeEnv(svc map[string]any) map[string]string {
	out := map[string]string{}
	switch e := get(svc, "environment").(type) {
	case map[string]any:
		for k, v := range e {
			out[k] = scalar(v)
		}
	case []any:
		for _, kv := range scalars(e) {
			k, v, _ := strings.Cut(kv, "=")
			out[k] = v
		}
	}
	return out
}

func loadCompose(t *testing.T) map[string]map[string]any {
	t.Helper()
	docs := decodeAll(t, "compose.yaml")
	if len(docs) != 1 {
		t.Fatalf("compose.yaml: want one document, got %d", len(docs))
	}
	out := map[string]map[string]any{}
	for name, svc := range mapAt(docs[0], "services") {
		s, ok := svc.(map[string]any)
		if !ok {
			t.Fatalf("compose.yaml: services.%s is not a mapping", name)
		}
		out[name] = s
	}
	return out
}

func TestEveryCAOVariableIsReadByTheLoader(t *testing.T) {
	known := loaderVariables(t)
	used := map[string][]string{} // name -> where
	use := func(name, where string) {
		if strings.HasPrefix(name, "CAO_") {
			used[name] = append(used[name], where)
		}
	}
	m := loadManifests(t)
	for _, w := range m.workloads() {
		for _, c := range w.containers() {
			for _, e := range listAt(c, "env") {
				use(str(e, "name"), w.String())
			}
		}
	}
	for _, o := range append(m.ofKind("Secret"), m.ofKind("ConfigMap")...) {
		for _, section := range []string{"data", "stringData"} {
			for k := range mapAt(o.doc, section) {
				if envName.MatchString(k) {
					use(k, o.String())
				}
			}
		}
	}
	for name, svc := range loadCompose(t) {
		for k := range composeEnv(svc) {
			use(k, "compose.yaml: services."+name)
		}
	}
	for _, df := range []string{"Dockerfile.api", "Dockerfile.worker"} {
		for k := range dockerEnv(parseDockerfile(t, df)) {
			use(k, df)
		}
	}
	if len(used) < 10 {
		t.Fatalf("found only %d CAO_* names in the deployment files: the scan is broken", len(used))
	}
	for _, name := range sortedKeys(used) {
		if !known[name] {
			t.Errorf("%s is set in %s but pkg/config never reads it (a typo, or a variable that does not exist)", name, strings.Join(used[name], "; "))
		}
	}
}

// parseConfig runs the real config loader over env and reports every bad value.
func parseConfig(t *testing.T, where string, env map[string]string) config.Config {
	t.Helper()
	cfg, err := config.Parse(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Errorf("%s: the config loader refuses this environment:\n%v", where, err)
	}
	return cfg
}

// role tells what a container runs: "api" (serve), "migrate", "worker", or "" for anything else.
func role(c map[string]any) string {
	args := scalars(listAt(c, "args"))
	switch imageName(c) {
	case apiImage:
		if len(args) == 0 || args[0] == "serve" {
			return "api"
		}
		if args[0] == "migrate" {
			return "migrate"
		}
	case workerImage:
		return "worker"
	}
	return ""
}

func TestManifestEnvironmentsPassTheConfigLoader(t *testing.T) {
	m := loadManifests(t)
	roles := map[string]int{}
	for _, w := range m.workloads() {
		for _, c := range w.containers() {
			where := fmt.Sprintf("%s container %s", w, str(c, "name"))
			env := m.env(t, where, c)
			cfg := parseConfig(t, where, env)
			r := role(c)
			roles[r]++
			switch r {
			case "api":
				if cfg.AuthOff {
					t.Errorf("%s: CAO_AUTH=off: the API would serve anyone", where)
				}
				if w.kind() != "Deployment" {
					t.Errorf("%s: the API runs as a Deployment", where)
				}
			case "migrate":
				if got := scalars(listAt(c, "args")); !slices.Equal(got, []string{"migrate", "up"}) || w.kind() != "Job" {
					t.Errorf("%s: the migration is a Job running `cao-api migrate up`, got %s args %v", where, w.kind(), got)
				}
			case "worker":
				if cfg.MetricsAddr == "" {
					t.Errorf("%s: CAO_METRICS_ADDR is unset: the worker would serve no /health for its probes", where)
				}
				grace, _ := get(w.pod, "terminationGracePeriodSeconds").(int)
				if time.Duration(grace)*time.Second <= cfg.ShutdownGrace {
					t.Errorf("%s: terminationGracePeriodSeconds %d must exceed CAO_SHUTDOWN_GRACE %s, or running steps are killed mid-call", where, grace, cfg.ShutdownGrace)
				}
			default:
				t.Errorf("%s: runs neither cao-api serve, cao-api migrate up nor cao-worker", where)
			}
		}
	}
	if roles["api"] == 0 || roles["migrate"] == 0 || roles["worker"] < 3 {
		t.Errorf("want an API Deployment, a migration Job and a worker Deployment per queue tier; got %v", roles)
	}
}

// routes are the literal paths of the API's router (api/internal/httpapi/server.go, r.GET) and of the
// worker's metrics listener (worker/main.go, "GET /path" patterns), read from their source.
func routes(t *testing.T) (api, worker []string) {
	t.Helper()
	for _, m := range regexp.MustCompile(`\br\.GET\("(/[^"]*)"`).FindAllSubmatch(readRepoFile(t, "api/internal/httpapi/server.go"), -1) {
		api = append(api, string(m[1]))
	}
	for _, m := range regexp.MustCompile(`\.Handle(?:Func)?\("GET (/[^"]*)"`).FindAllSubmatch(readRepoFile(t, "worker/main.go"), -1) {
		worker = append(worker, string(m[1]))
	}
	if len(api) == 0 || len(worker) == 0 {
		t.Fatalf("no routes found in server.go (%v) or worker/main.go (%v): the scan is out of date", api, worker)
	}
	return api, worker
}

func TestProbesUseRoutesTheProcessesServe(t *testing.T) {
	apiRoutes, workerRoutes := routes(t)
	m := loadManifests(t)
	for _, w := range m.workloads() {
		if w.kind() != "Deployment" {
			continue
		}
		for _, c := range w.containers() {
			where := fmt.Sprintf("%s container %s", w, str(c, "name"))
			env := m.env(t, where, c)
			var served []string
			var addrVar, wantLive, wantReady string
			switch role(c) {
			case "api":
				served, addrVar, wantLive, wantReady = apiRoutes, "CAO_HTTP_ADDR", "/health", "/health/services"
			case "worker":
				served, addrVar, wantLive, wantReady = workerRoutes, "CAO_METRICS_ADDR", "/health", "/health"
			default:
				continue
			}
			ports := map[string]string{} // name and number -> number
			for _, p := range listAt(c, "ports") {
				n := scalar(get(p, "containerPort"))
				ports[n] = n
				if name := str(p, "name"); name != "" {
					ports[name] = n
				}
			}
			listen := portOf(env[addrVar])
			if addrVar == "CAO_HTTP_ADDR" && env[addrVar] == "" {
				listen = portOf(config.DefaultHTTPAddr)
			}
			if listen == "" || ports[listen] != listen {
				t.Errorf("%s: %s=%q is not one of the container's ports %v", where, addrVar, env[addrVar], ports)
			}
			for probe, want := range map[string]string{"livenessProbe": wantLive, "readinessProbe": wantReady, "startupProbe": ""} {
				p := mapAt(c, probe)
				if p == nil {
					if want != "" {
						t.Errorf("%s: no %s", where, probe)
					}
					continue
				}
				hg := mapAt(p, "httpGet")
				if hg == nil {
					t.Errorf("%s: %s is not an httpGet probe (the image has no shell to exec into)", where, probe)
					continue
				}
				got := str(hg, "path")
				if !slices.Contains(served, got) {
					t.Errorf("%s: %s GET %s is not a route the process serves (%v)", where, probe, got, served)
				}
				if want != "" && got != want {
					t.Errorf("%s: %s path %s, want %s", where, probe, got, want)
				}
				if port := ports[scalar(get(hg, "port"))]; port != listen {
					t.Errorf("%s: %s port %v is not the %s port %s", where, probe, get(hg, "port"), addrVar, listen)
				}
			}
		}
	}
}

func TestSelectorsMatchTheirPods(t *testing.T) {
	m := loadManifests(t)
	workloads := m.workloads()
	deployments := map[string]workload{}
	for _, w := range workloads {
		if w.kind() != "Deployment" {
			continue
		}
		deployments[w.name()] = w
		sel := mapAt(w.doc, "spec", "selector", "matchLabels")
		if !selectorMatches(sel, w.labels) {
			t.Errorf("%s: spec.selector %v does not match its pod labels %v", w, sel, w.labels)
		}
		for _, other := range workloads {
			if other.String() != w.String() && selectorMatches(sel, other.labels) {
				t.Errorf("%s: selector %v also matches the pods of %s", w, sel, other)
			}
		}
		for _, tsc := range listAt(w.pod, "topologySpreadConstraints") {
			if s := mapAt(tsc, "labelSelector", "matchLabels"); !selectorMatches(s, w.labels) {
				t.Errorf("%s: topologySpreadConstraints selector %v does not match its own pods", w, s)
			}
		}
	}
	// matching is the Deployments whose pods sel selects.
	matching := func(sel map[string]any) []workload {
		var out []workload
		for _, name := range sortedKeys(deployments) {
			if selectorMatches(sel, deployments[name].labels) {
				out = append(out, deployments[name])
			}
		}
		return out
	}
	for _, svc := range m.ofKind("Service") {
		sel := mapAt(svc.doc, "spec", "selector")
		got := matching(sel)
		if len(got) != 1 {
			t.Errorf("%s: selector %v matches %d Deployments, want 1", svc, sel, len(got))
			continue
		}
		for _, p := range listAt(svc.doc, "spec", "ports") {
			target := scalar(get(p, "targetPort"))
			found := false
			for _, c := range got[0].containers() {
				for _, cp := range listAt(c, "ports") {
					found = found || target == str(cp, "name") || target == scalar(get(cp, "containerPort"))
				}
			}
			if !found {
				t.Errorf("%s: targetPort %s is no port of %s", svc, target, got[0])
			}
		}
	}
	for _, pdb := range m.ofKind("PodDisruptionBudget") {
		if sel := mapAt(pdb.doc, "spec", "selector", "matchLabels"); len(matching(sel)) != 1 {
			t.Errorf("%s: selector %v matches %d Deployments, want 1", pdb, sel, len(matching(sel)))
		}
	}
	if _, ok := m.find("PodDisruptionBudget", "cao-api"); !ok {
		t.Errorf("no PodDisruptionBudget for the API")
	}
	for _, o := range append(m.ofKind("ScaledObject"), m.ofKind("HorizontalPodAutoscaler")...) {
		ref := mapAt(o.doc, "spec", "scaleTargetRef")
		if k := str(ref, "kind"); k != "" && k != "Deployment" {
			t.Errorf("%s: scaleTargetRef kind %s, want Deployment", o, k)
		}
		if _, ok := deployments[str(ref, "name")]; !ok {
			t.Errorf("%s: scaleTargetRef names Deployment %q, which does not exist", o, str(ref, "name"))
		}
	}
	for _, w := range workloads {
		if sa := str(w.pod, "serviceAccountName"); sa != "" {
			if _, ok := m.find("ServiceAccount", sa); !ok {
				t.Errorf("%s: serviceAccountName %s is not defined", w, sa)
			}
		}
		for _, v := range listAt(w.pod, "volumes") {
			if name := str(v, "configMap", "name"); name != "" {
				if _, ok := m.find("ConfigMap", name); !ok {
					t.Errorf("%s: volume %s mounts ConfigMap %s, which is not defined", w, str(v, "name"), name)
				}
			}
		}
	}
}

// renderRegistryConfigMap is registry-configmap.yaml as -update writes it.
func renderRegistryConfigMap(t *testing.T) []byte {
	t.Helper()
	var b strings.Builder
	b.WriteString(`# GENERATED from deploy/registry.yaml and deploy/registry.openai.yaml: edit those, then
#   cd api && go test ./internal/deploycheck -run TestRegistryConfigMap -update
# (the test fails while they differ). Mounted at /etc/cao; CAO_REGISTRY (cao-config) picks the file.
# A process reads its registry at start: after a change, restart them:
#   kubectl -n cao rollout restart deployment -l app.kubernetes.io/part-of=cao
apiVersion: v1
kind: ConfigMap
metadata:
  name: ` + registryConfigMap + `
  labels:
    app.kubernetes.io/part-of: cao
data:
`)
	for _, key := range registryKeys {
		content := string(readRepoFile(t, "deploy/"+key))
		if !strings.HasSuffix(content, "\n") || strings.HasSuffix(content, "\n\n") {
			t.Fatalf("deploy/%s must end with exactly one newline to be embedded as a block scalar", key)
		}
		b.WriteString("  " + key + ": |\n")
		for _, line := range strings.Split(strings.TrimSuffix(content, "\n"), "\n") {
			if line != "" {
				b.WriteString("    " + line)
			}
			b.WriteString("\n")
		}
	}
	return []byte(b.String())
}

// dummyLookup answers ${VAR} lookups of the registry with a placeholder for the variables env
// provides (the Secrets' values are placeholders too) and nothing for the others.
func dummyLookup(env map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		if _, ok := env[name]; !ok {
			return "", false
		}
		if strings.HasSuffix(name, "_URL") {
			return "https://provider.example.invalid/v1", true
		}
		return "deploycheck-placeholder-" + strings.ToLower(name), true
	}
}

func TestRegistryConfigMap(t *testing.T) {
	if *update {
		if err := os.WriteFile(repoPath(registryConfigMapFile), renderRegistryConfigMap(t), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := loadManifests(t)
	cm, ok := m.data(t, "ConfigMap", registryConfigMap)
	if !ok {
		t.Fatalf("no ConfigMap %s", registryConfigMap)
	}
	if got := sortedKeys(cm); !slices.Equal(got, sortedKeys(map[string]bool{registryKeys[0]: true, registryKeys[1]: true})) {
		t.Errorf("ConfigMap %s has keys %v, want %v", registryConfigMap, got, registryKeys)
	}
	for _, key := range registryKeys {
		if cm[key] != string(readRepoFile(t, "deploy/"+key)) {
			t.Errorf("ConfigMap %s key %s differs from deploy/%s; regenerate it: cd api && go test ./internal/deploycheck -run TestRegistryConfigMap -update", registryConfigMap, key, key)
		}
	}
	workerQueues := map[string]bool{}
	loaded := map[string]*registry.Registry{}
	mounted := 0
	for _, w := range m.workloads() {
		volumes := map[string]bool{}
		for _, v := range listAt(w.pod, "volumes") {
			if str(v, "configMap", "name") == registryConfigMap {
				volumes[str(v, "name")] = true
			}
		}
		for _, c := range w.containers() {
			where := fmt.Sprintf("%s container %s", w, str(c, "name"))
			r := role(c)
			if r != "api" && r != "worker" {
				continue
			}
			env := m.env(t, where, c)
			cfg := parseConfig(t, where, env)
			if r == "worker" {
				for q := range cfg.WorkerQueues {
					workerQueues[q] = true
				}
			}
			mountPath := ""
			for _, vm := range listAt(c, "volumeMounts") {
				if volumes[str(vm, "name")] {
					mountPath = str(vm, "mountPath")
				}
			}
			if mountPath == "" {
				t.Errorf("%s: does not mount ConfigMap %s", where, registryConfigMap)
				continue
			}
			mounted++
			if dir, file := path.Split(cfg.RegistryPath); path.Clean(dir) != path.Clean(mountPath) || cm[file] == "" {
				t.Errorf("%s: CAO_REGISTRY=%s is not a file of ConfigMap %s mounted at %s", where, cfg.RegistryPath, registryConfigMap, mountPath)
			}
			// Every registry of the ConfigMap must load with the variables this pod provides, so that
			// switching CAO_REGISTRY to another one needs no other change than filling in the Secrets.
			for _, key := range registryKeys {
				reg, err := registry.Parse(registryConfigMapFile+": "+key, []byte(cm[key]), dummyLookup(env))
				if err != nil {
					t.Errorf("%s: registry %s does not load with this pod's environment:\n%v", where, key, err)
					continue
				}
				loaded[key] = reg
			}
		}
	}
	if mounted == 0 {
		t.Fatalf("no API or worker container mounts ConfigMap %s", registryConfigMap)
	}
	for _, key := range sortedKeys(loaded) {
		for _, q := range loaded[key].Queues() {
			if !workerQueues[q] {
				t.Errorf("registry %s uses queue %q, which no worker Deployment serves (CAO_WORKER_QUEUES)", key, q)
			}
		}
	}
}

// asynqPendingKey is the Redis list where Asynq keeps queue's pending tasks, found by enqueueing a
// task with the real client into an in-memory Redis.
func asynqPendingKey(t *testing.T, queue string) string {
	t.Helper()
	mr := miniredis.RunT(t)
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: mr.Addr()})
	defer func() { _ = c.Close() }()
	if _, err := c.Enqueue(asynq.NewTask("deploycheck", nil), asynq.Queue(queue)); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	var lists []string
	for _, k := range mr.Keys() {
		if mr.Type(k) == "list" {
			lists = append(lists, k)
		}
	}
	if len(lists) != 1 {
		t.Fatalf("after one enqueue into %s, Redis holds lists %v, want one (the pending list)", queue, lists)
	}
	return lists[0]
}

// workerTiers is every worker Deployment with the queues it serves.
func workerTiers(t *testing.T, m *manifests) map[string]config.Config {
	t.Helper()
	out := map[string]config.Config{}
	for _, w := range m.workloads() {
		for _, c := range w.containers() {
			if w.kind() == "Deployment" && role(c) == "worker" {
				where := fmt.Sprintf("%s container %s", w, str(c, "name"))
				out[w.name()] = parseConfig(t, where, m.env(t, where, c))
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no worker Deployments")
	}
	return out
}

func TestKEDAScalesEachTierOnItsPendingList(t *testing.T) {
	m := loadManifests(t)
	tiers := workerTiers(t, m)
	scaled := map[string]int{}
	auths := map[string]object{}
	for _, o := range m.ofKind("TriggerAuthentication") {
		auths[o.name()] = o
	}
	for _, o := range m.ofKind("ScaledObject") {
		target := str(o.doc, "spec", "scaleTargetRef", "name")
		cfg, ok := tiers[target]
		if !ok {
			t.Errorf("%s: scales %q, which is not a worker Deployment", o, target)
			continue
		}
		scaled[target]++
		minR, _ := get(o.doc, "spec", "minReplicaCount").(int)
		maxR, _ := get(o.doc, "spec", "maxReplicaCount").(int)
		if maxR < 1 || minR > maxR {
			t.Errorf("%s: minReplicaCount %d, maxReplicaCount %d", o, minR, maxR)
		}
		redisURL, err := url.Parse(cfg.RedisURL)
		if err != nil {
			t.Fatalf("%s: CAO_REDIS_URL: %v", target, err)
		}
		wantAddr := redisURL.Host
		if redisURL.Port() == "" {
			wantAddr += ":6379"
		}
		wantDB := strings.TrimPrefix(redisURL.Path, "/")
		if wantDB == "" {
			wantDB = "0"
		}
		lists := map[string]bool{}
		for _, tr := range listAt(o.doc, "spec", "triggers") {
			if str(tr, "type") != "redis" {
				t.Errorf("%s: trigger type %q, want redis", o, str(tr, "type"))
				continue
			}
			md := mapAt(tr, "metadata")
			lists[str(md, "listName")] = true
			if n, err := strconv.Atoi(scalar(get(md, "listLength"))); err != nil || n < 1 {
				t.Errorf("%s: listLength %v is not a positive integer", o, get(md, "listLength"))
			}
			if got := str(md, "address"); got != wantAddr {
				t.Errorf("%s: redis address %q, but the workers' CAO_REDIS_URL names %q", o, got, wantAddr)
			}
			if got := scalar(get(md, "databaseIndex")); got != wantDB {
				t.Errorf("%s: databaseIndex %q, but the workers' CAO_REDIS_URL uses DB %q", o, got, wantDB)
			}
			if ref := str(tr, "authenticationRef", "name"); ref != "" {
				ta, ok := auths[ref]
				if !ok {
					t.Errorf("%s: authenticationRef %s is not defined", o, ref)
				}
				for _, s := range listAt(ta.doc, "spec", "secretTargetRef") {
					data, ok := m.data(t, "Secret", str(s, "name"))
					if _, has := data[str(s, "key")]; !ok || !has {
						t.Errorf("%s: secretTargetRef %s/%s is not defined", ta, str(s, "name"), str(s, "key"))
					}
				}
			}
		}
		want := map[string]bool{}
		for q := range cfg.WorkerQueues {
			want[asynqPendingKey(t, q)] = true
		}
		if !slices.Equal(sortedKeys(lists), sortedKeys(want)) {
			t.Errorf("%s: triggers watch lists %v; the tier serves %v, whose pending lists are %v", o, sortedKeys(lists), sortedKeys(cfg.WorkerQueues), sortedKeys(want))
		}
	}
	for name := range tiers {
		if scaled[name] != 1 {
			t.Errorf("worker Deployment %s has %d ScaledObjects, want 1", name, scaled[name])
		}
	}
}

func TestHPAScalesEachTierOnQueueDepth(t *testing.T) {
	// The metric exists under that name, with queue and state labels and a pending state.
	const metric = "cao_queue_depth"
	mt := metrics.New(func() float64 { return 0 })
	mt.QueueDepth.WithLabelValues("heavy", "pending").Set(0)
	families, err := mt.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() != metric {
			continue
		}
		found = true
		var labels []string
		for _, l := range f.GetMetric()[0].GetLabel() {
			labels = append(labels, l.GetName())
		}
		if !slices.Contains(labels, "queue") || !slices.Contains(labels, "state") {
			t.Errorf("%s has labels %v, want queue and state", metric, labels)
		}
	}
	if !found || !slices.Contains(metrics.QueueStates, "pending") {
		t.Fatalf("pkg/metrics exports no %s with a pending state", metric)
	}

	m := loadManifests(t)
	tiers := workerTiers(t, m)
	scaled := map[string]int{}
	for _, o := range m.ofKind("HorizontalPodAutoscaler") {
		target := str(o.doc, "spec", "scaleTargetRef", "name")
		cfg, ok := tiers[target]
		if !ok {
			t.Errorf("%s: scales %q, which is not a worker Deployment", o, target)
			continue
		}
		scaled[target]++
		queues := map[string]bool{}
		for _, mm := range listAt(o.doc, "spec", "metrics") {
			ext := mapAt(mm, "external")
			if str(mm, "type") != "External" || str(ext, "metric", "name") != metric {
				t.Errorf("%s: metric %v, want External %s", o, mm, metric)
				continue
			}
			sel := mapAt(ext, "metric", "selector", "matchLabels")
			queues[str(sel, "queue")] = true
			if str(sel, "state") != "pending" {
				t.Errorf("%s: selector %v, want state: pending", o, sel)
			}
			if str(ext, "target", "type") != "AverageValue" || str(ext, "target", "averageValue") == "" {
				t.Errorf("%s: target %v, want an AverageValue (backlog per replica)", o, mapAt(ext, "target"))
			}
		}
		if !slices.Equal(sortedKeys(queues), sortedKeys(cfg.WorkerQueues)) {
			t.Errorf("%s: scales on queues %v, the tier serves %v", o, sortedKeys(queues), sortedKeys(cfg.WorkerQueues))
		}
	}
	for name := range tiers {
		if scaled[name] != 1 {
			t.Errorf("worker Deployment %s has %d HorizontalPodAutoscalers (autoscaling/hpa), want 1", name, scaled[name])
		}
	}
}

func TestPodsAreLockedDownAndSized(t *testing.T) {
	m := loadManifests(t)
	for _, w := range m.workloads() {
		psc := mapAt(w.pod, "securityContext")
		if get(w.pod, "automountServiceAccountToken") != false {
			t.Errorf("%s: automountServiceAccountToken must be false (CAO never calls the Kubernetes API)", w)
		}
		if str(psc, "seccompProfile", "type") != "RuntimeDefault" {
			t.Errorf("%s: pod securityContext.seccompProfile.type must be RuntimeDefault", w)
		}
		if uid, ok := get(psc, "runAsUser").(int); ok && uid == 0 {
			t.Errorf("%s: runAsUser 0", w)
		}
		for _, c := range w.containers() {
			where := fmt.Sprintf("%s container %s", w, str(c, "name"))
			csc := mapAt(c, "securityContext")
			if get(csc, "runAsNonRoot") != true && get(psc, "runAsNonRoot") != true {
				t.Errorf("%s: runAsNonRoot is not set", where)
			}
			if get(csc, "readOnlyRootFilesystem") != true {
				t.Errorf("%s: readOnlyRootFilesystem must be true", where)
			}
			if get(csc, "allowPrivilegeEscalation") != false {
				t.Errorf("%s: allowPrivilegeEscalation must be false", where)
			}
			if drop := scalars(listAt(csc, "capabilities", "drop")); !slices.Contains(drop, "ALL") {
				t.Errorf("%s: capabilities.drop must contain ALL", where)
			}
			for _, kind := range []string{"requests", "limits"} {
				for _, res := range []string{"cpu", "memory"} {
					if scalar(get(c, "resources", kind, res)) == "" {
						t.Errorf("%s: resources.%s.%s is not set", where, kind, res)
					}
				}
			}
		}
	}
}

func TestComposeFile(t *testing.T) {
	services := loadCompose(t)
	for _, name := range []string{"postgres", "redis", "migrate", "api", "worker"} {
		if services[name] == nil {
			t.Fatalf("compose.yaml has no service %s", name)
		}
	}
	entrypoints := map[string]string{}
	for _, df := range []string{"Dockerfile.api", "Dockerfile.worker"} {
		for _, in := range finalStage(parseDockerfile(t, df)) {
			if in.cmd == "ENTRYPOINT" {
				if ep, ok := execForm(in.args); ok && len(ep) > 0 {
					entrypoints[df] = ep[0]
				}
			}
		}
	}
	// One image tag for the API and the migrations: api builds it, migrate runs it (two services
	// building one tag race each other).
	api, migrate, worker := services["api"], services["migrate"], services["worker"]
	if str(api, "image") == "" || str(api, "image") != str(migrate, "image") {
		t.Errorf("compose.yaml: api and migrate must name the same image, got %q and %q", str(api, "image"), str(migrate, "image"))
	}
	if get(migrate, "build") != nil {
		t.Errorf("compose.yaml: migrate must not build (api builds the image they share)")
	}
	if got := scalars(listAt(migrate, "command")); !slices.Equal(got, []string{"migrate", "up"}) {
		t.Errorf("compose.yaml: migrate runs %v, want [migrate up]", got)
	}
	for name, df := range map[string]string{"api": "Dockerfile.api", "worker": "Dockerfile.worker"} {
		svc := services[name]
		if got := str(svc, "build", "dockerfile"); got != df {
			t.Errorf("compose.yaml: %s builds %q, want %s", name, got, df)
		}
		want := []string{"CMD", entrypoints[df], "healthcheck"}
		if got := scalars(listAt(svc, "healthcheck", "test")); !slices.Equal(got, want) {
			t.Errorf("compose.yaml: %s healthcheck test %v, want %v (no shell in the image)", name, got, want)
		}
	}
	env := dockerEnv(parseDockerfile(t, "Dockerfile.worker"))
	for k, v := range composeEnv(worker) {
		env[k] = v
	}
	cfg := parseConfig(t, "compose.yaml: services.worker", env)
	if port := portOf(cfg.MetricsAddr); port == "" || !slices.ContainsFunc(append(scalars(listAt(worker, "expose")), scalars(listAt(worker, "ports"))...), func(p string) bool { return strings.HasSuffix(p, port) }) {
		t.Errorf("compose.yaml: worker must set CAO_METRICS_ADDR (its healthcheck needs it) and expose that port; CAO_METRICS_ADDR=%q", cfg.MetricsAddr)
	}
	for name, df := range map[string]string{"api": "Dockerfile.api", "migrate": "Dockerfile.api"} {
		env := dockerEnv(parseDockerfile(t, df))
		for k, v := range composeEnv(services[name]) {
			env[k] = v
		}
		parseConfig(t, "compose.yaml: services."+name, env)
	}
	conditions := []string{"service_healthy", "service_completed_successfully", "service_started"}
	for _, name := range sortedKeys(services) {
		deps, ok := get(services[name], "depends_on").(map[string]any)
		if get(services[name], "depends_on") != nil && !ok {
			t.Errorf("compose.yaml: %s: depends_on must be a mapping with conditions", name)
		}
		for dep, spec := range deps {
			cond := str(spec, "condition")
			target := services[dep]
			switch {
			case target == nil:
				t.Errorf("compose.yaml: %s depends on undefined service %s", name, dep)
			case !slices.Contains(conditions, cond):
				t.Errorf("compose.yaml: %s depends on %s with condition %q, want one of %v", name, dep, cond, conditions)
			case cond == "service_healthy" && (get(target, "healthcheck", "test") == nil || get(target, "healthcheck", "disable") == true):
				t.Errorf("compose.yaml: %s waits for %s to be healthy, which has no healthcheck", name, dep)
			case cond == "service_completed_successfully" && str(target, "restart") != "no":
				t.Errorf("compose.yaml: %s waits for %s to complete, which restarts (%q)", name, dep, str(target, "restart"))
			}
		}
	}
	for _, name := range []string{"api", "worker"} {
		if get(services[name], "depends_on", "migrate", "condition") != "service_completed_successfully" {
			t.Errorf("compose.yaml: %s must wait for migrate to complete", name)
		}
	}
	if stop, err := time.ParseDuration(str(worker, "stop_grace_period")); err != nil || stop <= cfg.ShutdownGrace {
		t.Errorf("compose.yaml: worker stop_grace_period %q must exceed CAO_SHUTDOWN_GRACE %s", str(worker, "stop_grace_period"), cfg.ShutdownGrace)
	}
}

// sourceMentions reports whether a non-test Go file of dirs holds the literal s.
func sourceMentions(t *testing.T, s string, dirs ...string) bool {
	t.Helper()
	for _, dir := range dirs {
		files, err := filepath.Glob(repoPath(dir + "/*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), s) {
				return true
			}
		}
	}
	return false
}

func TestDockerfiles(t *testing.T) {
	for df, spec := range map[string]struct {
		addrVar string
		source  []string // where the healthcheck subcommand is dispatched
	}{
		"Dockerfile.api":    {"CAO_HTTP_ADDR", []string{"api", "api/internal/cli"}},
		"Dockerfile.worker": {"CAO_METRICS_ADDR", []string{"worker"}},
	} {
		final := finalStage(parseDockerfile(t, df))
		from := strings.Fields(final[0].args)
		base := from[len(from)-1]
		if len(from) > 1 && strings.EqualFold(from[len(from)-2], "AS") {
			base = from[0]
		}
		if !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
			t.Errorf("%s: final stage FROM %s, want a distroless static image or scratch (no shell)", df, base)
		}
		var entrypoint, health []string
		user, expose := "", []string{}
		for _, in := range final {
			switch in.cmd {
			case "RUN":
				t.Errorf("%s:%d: RUN in the final stage (the image has no shell)", df, in.line)
			case "USER":
				user = in.args
			case "EXPOSE":
				expose = append(expose, strings.Fields(in.args)...)
			case "ENTRYPOINT":
				ep, ok := execForm(in.args)
				if !ok {
					t.Errorf("%s:%d: ENTRYPOINT must use the exec form", df, in.line)
				}
				entrypoint = ep
			case "HEALTHCHECK":
				_, cmd, ok := strings.Cut(in.args, "CMD ")
				hc, exec := execForm(strings.TrimSpace(cmd))
				if !ok || !exec {
					t.Errorf("%s:%d: HEALTHCHECK must be CMD in the exec form (no shell): %s", df, in.line, in.args)
				}
				health = hc
			}
		}
		uid, _, _ := strings.Cut(user, ":")
		if n, err := strconv.Atoi(uid); err != nil || n == 0 {
			t.Errorf("%s: USER %q, want a numeric non-root user (Kubernetes' runAsNonRoot can verify only a number)", df, user)
		}
		if len(entrypoint) == 0 || !slices.Equal(health, []string{entrypoint[0], "healthcheck"}) {
			t.Errorf("%s: HEALTHCHECK CMD %q, want [%q \"healthcheck\"] (the binary's own check)", df, health, strings.Join(entrypoint, " "))
		}
		if !sourceMentions(t, `"healthcheck"`, spec.source...) {
			t.Errorf("%s: the healthcheck subcommand is not dispatched anywhere in %v", df, spec.source)
		}
		env := dockerEnv(final)
		port := portOf(env[spec.addrVar])
		if port == "" || !slices.ContainsFunc(expose, func(e string) bool { return strings.TrimSuffix(e, "/tcp") == port }) {
			t.Errorf("%s: %s=%q must be set (the healthcheck reads it) and its port EXPOSEd (%v)", df, spec.addrVar, env[spec.addrVar], expose)
		}
	}
}

func TestDockerignoreKeepsWhatTheBuildNeeds(t *testing.T) {
	ignore := parseDockerignore(string(readRepoFile(t, ".dockerignore")))
	for _, p := range []string{".git", ".cao", "bin", "api/internal/httpapi/server_test.go", "docs/screenshots", "bench", "deploy/k8s", "node_modules", "x/node_modules"} {
		if ex, _ := ignore.excluded(p); !ex {
			t.Errorf(".dockerignore does not exclude %s", p)
		}
	}
	// Whatever a Dockerfile copies from the context must be in it.
	var needed []string
	for _, df := range []string{"Dockerfile.api", "Dockerfile.worker"} {
		for _, in := range parseDockerfile(t, df) {
			if in.cmd != "COPY" && in.cmd != "ADD" {
				continue
			}
			var args []string
			from := false
			for _, f := range strings.Fields(in.args) {
				if strings.HasPrefix(f, "--from=") {
					from = true
				}
				if !strings.HasPrefix(f, "--") {
					args = append(args, f)
				}
			}
			if from || len(args) < 2 {
				continue
			}
			needed = append(needed, args[:len(args)-1]...)
		}
	}
	// And every non-test Go file and embedded file of the modules the images build.
	embed := regexp.MustCompile(`(?m)^//go:embed (.+)$`)
	for _, mod := range []string{"db", "pkg", "api", "worker"} {
		err := filepath.WalkDir(repoPath(mod), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			needed = append(needed, filepath.ToSlash(rel))
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range embed.FindAllStringSubmatch(string(b), -1) {
				for _, pat := range strings.Fields(m[1]) {
					matches, _ := filepath.Glob(filepath.Join(filepath.Dir(p), pat))
					if len(matches) == 0 {
						t.Errorf("%s: //go:embed %s matches nothing", rel, pat)
					}
					for _, mp := range matches {
						_ = filepath.WalkDir(mp, func(f string, _ os.DirEntry, _ error) error {
							r, _ := filepath.Rel(root, f)
							needed = append(needed, filepath.ToSlash(r))
							return nil
						})
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range needed {
		if ex, by := ignore.excluded(p); ex {
			t.Errorf(".dockerignore line %q excludes %s, which the image build needs", by, p)
		}
	}
}

package registry

// This file decodes features and their steps: needs, queues, requests and their templates.

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/cao-run/cao/pkg/render"
	"github.com/cao-run/cao/pkg/schema"
)

// templateErrors reports the errors of render.Compile at their full path.
func (l *loader) templateErrors(path string, err error) {
	for _, e := range flatten(err) {
		var pe *render.PathError
		if errors.As(e, &pe) {
			l.errorf(subPath(path, pe.Path), "%v", pe.Err)
		} else {
			l.errorf(path, "%v", e)
		}
	}
}

func subPath(path, sub string) string {
	switch {
	case sub == "":
		return path
	case strings.HasPrefix(sub, "["):
		return path + sub
	}
	return join(path, sub)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func (l *loader) feature(name, path string, n *yaml.Node, services map[string]*Service, declared map[string]string) *Feature {
	feat := &Feature{Name: name}
	f := l.fields(n, path, featureFields)
	if f == nil {
		return feat
	}
	if v := f["description"]; v != nil {
		feat.Description, _ = l.str(v, join(path, "description"))
	}
	if v := f["input"]; v != nil {
		p := join(path, "input")
		if doc, ok := l.value(v, p); ok {
			s, err := schema.Compile(doc)
			if err != nil {
				for _, e := range flatten(err) {
					var ce *schema.CompileError
					if errors.As(e, &ce) {
						l.errorf(subPath(p, ce.Path), "%s", ce.Message)
					} else {
						l.errorf(p, "%v", e)
					}
				}
			} else {
				feat.Input = s
			}
		}
	}

	sp := join(path, "steps")
	v := f["steps"]
	if v == nil {
		l.errorf(sp, "required (a list of at least one step)")
		return feat
	}
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		l.errorf(sp, "expected a list of at least one step, got %s", l.show(v))
		return feat
	}

	// Names first, so that needs may point forward in the file.
	names := make([]string, 0, len(v.Content))
	first := map[string]int{}
	stepFieldsOf := make([]map[string]*yaml.Node, len(v.Content))
	for i, sn := range v.Content {
		p := fmt.Sprintf("%s[%d]", sp, i)
		sf := l.fields(sn, p, stepFields)
		stepFieldsOf[i] = sf
		if sf == nil {
			continue
		}
		nn := sf["name"]
		if nn == nil {
			l.errorf(join(p, "name"), "required")
			continue
		}
		s, ok := l.str(nn, join(p, "name"))
		if !ok {
			continue
		}
		if !nameRe.MatchString(s) {
			l.errorf(join(p, "name"), "invalid step name %q (letters, digits, _ and - only)", s)
			continue
		}
		if j, dup := first[s]; dup {
			l.errorf(join(p, "name"), "duplicate step %q (also steps[%d])", s, j)
			continue
		}
		first[s] = i
		names = append(names, s)
	}

	templates := map[string][]templateField{} // by step name
	for i := range v.Content {
		if stepFieldsOf[i] == nil {
			continue
		}
		p := fmt.Sprintf("%s[%d]", sp, i)
		st := l.step(name, p, stepFieldsOf[i], names, services, declared)
		if st != nil {
			if j, ok := first[st.Name]; ok && j == i {
				feat.Steps = append(feat.Steps, st)
				templates[st.Name] = stepTemplates(p, st, stepFieldsOf[i], services[st.Service])
			}
		}
	}
	l.cycles(feat, sp, first)
	l.checkStepRefs(feat, names, templates)
	return feat
}

// stepTemplates returns the template strings a step renders: its request, and its mock output, its
// own or its service's.
func stepTemplates(path string, st *Step, f map[string]*yaml.Node, svc *Service) []templateField {
	out := requestTemplates(join(path, "request"), st.Request)
	switch {
	case f["output"] != nil:
		out = append(out, templateFields(join(path, "output"), st.Mock.Output)...)
	case svc != nil && st.Mock.Output != nil:
		for _, tf := range templateFields(join(join("services", svc.Name), "output"), st.Mock.Output) {
			tf.via = path
			out = append(out, tf)
		}
	}
	// The service's budgets and limit per key render with this step's data.
	for _, tf := range budgetTemplates(svc) {
		tf.via = path
		out = append(out, tf)
	}
	if kl := st.KeyLimit; kl != nil && kl.Template != nil {
		tf := templateField{path: kl.Path, text: kl.Text}
		if !strings.HasPrefix(kl.Path, path+".") {
			tf.via = path
		}
		out = append(out, tf)
	}
	return out
}

func (l *loader) step(feature, path string, f map[string]*yaml.Node, names []string, services map[string]*Service, declared map[string]string) *Step {
	st := &Step{Queue: DefaultQueue}
	if v := f["name"]; v != nil {
		st.Name = v.Value
	}

	var svc *Service
	kind := ""
	if v := f["service"]; v == nil {
		l.errorf(join(path, "service"), "required")
	} else if s, ok := l.str(v, join(path, "service")); ok {
		k, known := declared[s]
		if !known {
			l.errorf(join(path, "service"), "unknown service %q (services: %s)", s, list(keys(declared)))
		} else {
			st.Service, svc, kind = s, services[s], k
		}
	}
	if svc != nil {
		st.Timeout, st.Retry, st.Mock = svc.Timeout, svc.Retry, svc.Mock
	}

	if v := f["queue"]; v != nil {
		p := join(path, "queue")
		if s, ok := l.str(v, p); ok {
			if s == "" || strings.ContainsAny(s, " \t\r\n:{}") {
				l.errorf(p, "invalid queue name %s (must be non-empty, without spaces, ':' or braces)", l.show(v))
			} else {
				st.Queue = s
			}
		}
	}

	if v := f["needs"]; v != nil {
		p := join(path, "needs")
		if v.Kind != yaml.SequenceNode {
			l.errorf(p, "expected a list of step names, got %s", l.show(v))
		} else {
			for i, c := range v.Content {
				c = resolve(c)
				s, ok := l.str(c, fmt.Sprintf("%s[%d]", p, i))
				if !ok {
					continue
				}
				switch {
				case !slices.Contains(names, s):
					l.errorf(p, "unknown step %q (steps of %s: %s)", s, feature, strings.Join(names, ", "))
				case slices.Contains(st.Needs, s):
					l.errorf(p, "%q is listed twice", s)
				default:
					st.Needs = append(st.Needs, s)
				}
			}
		}
	}

	if v := f["timeout"]; v != nil {
		if d, ok := l.duration(v, join(path, "timeout"), true); ok {
			st.Timeout = d
		}
	}
	if v := f["retry"]; v != nil {
		st.Retry = l.retry(v, join(path, "retry"), st.Retry)
	}

	switch kind {
	case KindHTTP:
		for _, k := range mockFields {
			if f[k] != nil {
				l.errorf(join(path, k), "only allowed for steps of %s services (service %s is %s)", KindMock, st.Service, KindHTTP)
			}
		}
	case KindMock:
		st.Mock = l.mock(f, path, st.Mock)
	}

	st.KeyLimit = l.stepKeyLimit(f, path, svc)

	var secrets []string
	if v := f["request"]; v != nil {
		if kind == KindMock {
			l.errorf(join(path, "request"), "only allowed for steps of %s services (service %s is %s)", KindHTTP, st.Service, KindMock)
		} else {
			st.Request, secrets = l.request(v, join(path, "request"))
		}
	} else if kind == KindHTTP {
		st.Request = defaultRequest()
	}
	if svc != nil {
		// A step's request headers and query carry credentials (literal header values count too); its
		// body and other settings are content, such as a model name, and would be mangled by redaction.
		svc.Secrets = append(svc.Secrets, secrets...)
	}
	return st
}

// checkTemplatedPath refuses a "?" in a path that holds a template: query parameters go in query:,
// where every value is encoded on its own. A literal query in a path without templates, such as
// "/search?format=json", stays allowed: nothing from the input can reach it. (Whatever a template
// renders into a path is escaped by the caller, "?" and "#" included, so input cannot add a query.)
func (l *loader) checkTemplatedPath(n *yaml.Node, s, path string) bool {
	if strings.Contains(s, "{{") && strings.Contains(s, "?") {
		l.errorf(path, "a templated path must not contain \"?\" (put query parameters under query:, one template per value), got %s", l.show(n))
		return false
	}
	return true
}

func defaultRequest() *Request {
	body := map[string]any{}
	return &Request{
		Method:       "POST",
		Path:         "/",
		Body:         body,
		PathTemplate: must(render.CompileString("/")),
		BodyTemplate: must(render.Compile(body)),
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// request reads a step's request and compiles its templates; it also returns the literal header
// values, which are secrets.
func (l *loader) request(n *yaml.Node, path string) (*Request, []string) {
	f := l.fields(n, path, requestFields)
	if f == nil {
		return nil, nil
	}
	r := &Request{Method: "POST", Path: "/"}
	// Values from the environment in the headers, query and path are credentials (an API key may sit
	// in a path, as in /bot${TOKEN}/sendMessage), as those of the base URL are.
	secrets := append(l.secretsOf(f["headers"]), l.secretsOf(f["query"])...)
	secrets = append(secrets, l.secretsOf(f["path"])...)
	if v := f["method"]; v != nil {
		if m, ok := l.method(v, join(path, "method")); ok {
			r.Method = m
		}
	}
	if v := f["path"]; v != nil {
		p := join(path, "path")
		if s, ok := l.str(v, p); ok && l.checkPath(v, s, p) && l.checkTemplatedPath(v, s, p) {
			r.Path = s
		}
	}
	if t, err := render.CompileString(r.Path); err != nil {
		l.templateErrors(join(path, "path"), err)
	} else {
		r.PathTemplate = t
	}

	compileMap := func(key string, m map[string]string) map[string]*render.Template {
		out := make(map[string]*render.Template, len(m))
		for _, k := range keys(m) {
			t, err := render.CompileString(m[k])
			if err != nil {
				l.templateErrors(join(join(path, key), k), err)
				continue
			}
			out[k] = t
		}
		return out
	}
	if v := f["query"]; v != nil {
		p := join(path, "query")
		r.Query = map[string]string{}
		for _, e := range l.entries(v, p) {
			if s, ok := l.str(e.val, join(p, e.key)); ok {
				r.Query[e.key] = s
			}
		}
		r.QueryTemplates = compileMap("query", r.Query)
	}
	if v := f["headers"]; v != nil {
		r.Headers = l.headers(v, join(path, "headers"))
		r.HeaderTemplates = compileMap("headers", r.Headers)
		for _, h := range r.Headers {
			if !strings.Contains(h, "{{") { // a template is not a secret; its rendered value is the caller's business
				secrets = append(secrets, h)
				l.allSecrets = append(l.allSecrets, h)
			}
		}
	}
	if v := f["body"]; v != nil {
		p := join(path, "body")
		if body, ok := l.value(v, p); ok {
			if t, err := render.Compile(body); err != nil {
				l.templateErrors(p, err)
			} else {
				r.Body, r.BodyTemplate = body, t
			}
		}
	}
	return r, secrets
}

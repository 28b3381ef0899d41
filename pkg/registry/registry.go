package registry

import (
	"slices"
	"sort"
)

// Feature returns the feature called name.
func (r *Registry) Feature(name string) (*Feature, bool) {
	f, ok := r.Features[name]
	return f, ok
}

// Service returns the service called name.
func (r *Registry) Service(name string) (*Service, bool) {
	s, ok := r.Services[name]
	return s, ok
}

// FeatureNames returns the names of all features, sorted.
func (r *Registry) FeatureNames() []string { return keys(r.Features) }

// Queues returns the distinct queues used by the steps of all features, sorted.
func (r *Registry) Queues() []string {
	var out []string
	for _, f := range r.Features {
		for _, s := range f.Steps {
			if !slices.Contains(out, s.Queue) {
				out = append(out, s.Queue)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Redact replaces every secret of the service in text with "[REDACTED]", longest secrets first so that
// a secret containing another is hidden whole.
func (s *Service) Redact(text string) string { return redact(s.Secrets, text) }

// Step returns the step called name.
func (f *Feature) Step(name string) (*Step, bool) {
	for _, s := range f.Steps {
		if s.Name == name {
			return s, true
		}
	}
	return nil, false
}

// Downstream returns the names of every step that depends on the step called name, directly or
// transitively, in file order; the step itself is not included.
func (f *Feature) Downstream(name string) []string {
	reached := map[string]bool{name: true}
	// Steps may appear in any order in the file, so iterate until nothing new is reached.
	for changed := true; changed; {
		changed = false
		for _, s := range f.Steps {
			if reached[s.Name] {
				continue
			}
			for _, n := range s.Needs {
				if reached[n] {
					reached[s.Name], changed = true, true
					break
				}
			}
		}
	}
	var out []string
	for _, s := range f.Steps {
		if s.Name != name && reached[s.Name] {
			out = append(out, s.Name)
		}
	}
	return out
}

package registry

// This file checks that the steps of a feature form a DAG.

import (
	"fmt"
	"slices"
	"strings"
)

// cycles reports every dependency cycle of a feature, as "a -> b -> a" where each step needs the next.
func (l *loader) cycles(feat *Feature, path string, index map[string]int) {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var visit func(s *Step)
	visit = func(s *Step) {
		color[s.Name] = grey
		stack = append(stack, s.Name)
		for _, dep := range s.Needs {
			switch color[dep] {
			case grey:
				start := slices.Index(stack, dep)
				cycle := append(slices.Clone(stack[start:]), dep)
				l.errorf(fmt.Sprintf("%s[%d].needs", path, index[s.Name]), "dependency cycle: %s (each step needs the next)", strings.Join(cycle, " -> "))
			case white:
				if d, ok := feat.Step(dep); ok {
					visit(d)
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[s.Name] = black
	}
	for _, s := range feat.Steps {
		if color[s.Name] == white {
			visit(s)
		}
	}
}

package registry

import (
	"fmt"
	"strings"
)

// expand replaces ${VAR} and ${VAR:-default} in s with values from env. As in Docker Compose, "$$" is
// a literal "$", and a "$" not followed by "{" or "$" is kept as it is (so "^a$" or "{{ $x }}" need no
// escaping). ${VAR:-default} uses default when VAR is unset or empty; ${VAR} with VAR unset is an error,
// and with VAR set to "" expands to "". The default is taken literally (no nested expansion).
//
// It returns the expanded string, the names of the variables used and the values substituted.
func expand(s string, env func(string) (string, bool)) (out string, vars, values []string, err error) {
	if !strings.Contains(s, "$") {
		return s, nil, nil, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '{':
		default:
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", nil, nil, fmt.Errorf("unterminated ${ (write $$ for a literal $)")
		}
		expr := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validVarName(name) {
			return "", nil, nil, fmt.Errorf("invalid variable reference ${%s} (expected ${NAME} or ${NAME:-default})", expr)
		}
		val, ok := env(name)
		fromEnv := true
		switch {
		case hasDef && val == "":
			val, fromEnv = def, false
		case !ok:
			return "", nil, nil, fmt.Errorf("environment variable %s is not set (set it, or write ${%s:-default})", name, name)
		}
		b.WriteString(val)
		vars = append(vars, name)
		if fromEnv {
			// A default is written in the file for all to read: only values from the environment can
			// be secrets.
			values = append(values, val)
		}
		i += 2 + end
	}
	return b.String(), vars, values, nil
}

func validVarName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

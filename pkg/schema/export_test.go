package schema

// MustCompile is Compile that panics on error.
func MustCompile(v any) *Schema {
	s, err := Compile(v)
	if err != nil {
		panic(err)
	}
	return s
}

package render

// MustCompile is Compile that panics on error.
func MustCompile(v any) *Template {
	t, err := Compile(v)
	if err != nil {
		panic(err)
	}
	return t
}

// Source returns the value the template was compiled from.
func (t *Template) Source() any {
	if t == nil {
		return nil
	}
	return t.source
}

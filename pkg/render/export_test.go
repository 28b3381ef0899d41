package render

// Source returns the value the template was compiled from.
func (t *Template) Source() any {
	if t == nil {
		return nil
	}
	return t.source
}

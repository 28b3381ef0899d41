package schema_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/schema"
)

// benchSchema is a typical feature input: the README's business plan with a few more fields.
const benchSchema = `
type: object
required: [business_name, budget]
additionalProperties: false
properties:
  business_name: {type: string, minLength: 1, maxLength: 200}
  email: {type: string, format: email}
  budget: {type: number, minimum: 0.1, maximum: 1000000.5}
  employees: {type: integer, minimum: 1, maximum: 10000}
  market: {enum: [local, national, global]}
  country: {type: string, pattern: "^[A-Z]{2}$"}
  products:
    type: array
    maxItems: 20
    items:
      type: object
      required: [name]
      properties:
        name: {type: string, minLength: 1}
        price: {type: [number, "null"], minimum: 0}
`

// BenchmarkValidate measures what every POST pays: one valid typical input, and one with three errors.
func BenchmarkValidate(b *testing.B) {
	d, ok := registryValue(benchSchema)
	require.True(b, ok)
	s := schema.MustCompile(d)
	for _, c := range []struct{ name, input string }{
		{"valid", `{"business_name": "Acme Toys", "email": "founder@acme.example", "budget": 25000.5, "employees": 12,
			"market": "national", "country": "FR", "products": [{"name": "robot", "price": 49.9}, {"name": "kite", "price": null}]}`},
		{"invalid", `{"business_name": "", "budget": 0.05, "employees": 12, "market": "mars", "products": [{"price": 3}]}`},
	} {
		v, ok := decodeInput([]byte(c.input))
		require.True(b, ok)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Validate(v)
			}
		})
	}
}

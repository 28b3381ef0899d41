module github.com/cao-run/cao/worker

go 1.26.0

require (
	github.com/cao-run/cao/db v0.0.0
	github.com/cao-run/cao/pkg v0.0.0
)

replace (
	github.com/cao-run/cao/db => ../db
	github.com/cao-run/cao/pkg => ../pkg
)

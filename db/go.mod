module github.com/cao-run/cao/db

go 1.26.0

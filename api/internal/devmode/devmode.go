// Package devmode runs the whole CAO system in one process with embedded backends.
package devmode

import (
	"context"
	"errors"
)

// Run starts dev mode. (Being implemented: see issue 7.)
func Run(ctx context.Context, args []string) error { return errors.New("dev mode not implemented yet") }

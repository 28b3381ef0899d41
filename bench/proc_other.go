//go:build !linux

package main

import (
	"errors"
	"syscall"
	"time"
)

// childSysProcAttr has nothing to add outside Linux.
func childSysProcAttr() *syscall.SysProcAttr { return nil }

// procCPUTime needs /proc, which only Linux has.
func procCPUTime(string) (time.Duration, error) {
	return 0, errors.New("CPU time is read from /proc, which needs Linux")
}

// commCPUTime needs /proc, which only Linux has.
func commCPUTime(string) (time.Duration, error) {
	return 0, errors.New("CPU time is read from /proc, which needs Linux")
}

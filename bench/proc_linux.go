package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat (sysconf(_SC_CLK_TCK)), 100 on every Linux
// architecture Go supports.
const userHZ = 100

// childSysProcAttr makes the kernel kill a child process if the bench dies without cleaning up.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// procCPUTime returns utime+stime of a process ("self" for this one) from /proc/PID/stat.
func procCPUTime(pid string) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// commCPUTime returns the CPU time of every process whose command name is comm (postgres,
// redis-server), with that of the children they reaped: a Postgres backend that exited is counted in
// the postmaster's. Processes that exit between the listing and the read are left out.
func commCPUTime(comm string) (time.Duration, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		stat := string(b)
		if open, end := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')'); open < 0 || end < open || stat[open+1:end] != comm {
			continue
		}
		own, err := parseStatCPU(stat)
		if err != nil {
			return 0, err
		}
		reaped, err := parseStatChildrenCPU(stat)
		if err != nil {
			return 0, err
		}
		total += own + reaped
	}
	return total, nil
}

// parseStatCPU reads utime and stime (fields 14 and 15) from the text of /proc/PID/stat. The command
// name (field 2) is in parentheses and may contain spaces, so fields are counted after its ')'.
func parseStatCPU(stat string) (time.Duration, error) { return statTicks(stat, 11) }

// parseStatChildrenCPU reads cutime and cstime (fields 16 and 17): the CPU of the children the
// process waited for.
func parseStatChildrenCPU(stat string) (time.Duration, error) { return statTicks(stat, 13) }

// statTicks sums two consecutive tick counts of /proc/PID/stat, starting at field from+3.
func statTicks(stat string, from int) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat format: %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < from+2 {
		return 0, fmt.Errorf("unexpected /proc stat format: %q", stat)
	}
	var ticks int64
	for _, s := range f[from : from+2] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected /proc stat format: %q", stat)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

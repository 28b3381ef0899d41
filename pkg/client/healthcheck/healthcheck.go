// Package healthcheck is the `cao-api healthcheck` and `cao-worker healthcheck` subcommands: for
// images without a shell (or curl), the binary itself asks the local process's liveness endpoint.
// It uses only the standard library, so the worker binary gains no dependency.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Timeout bounds one check.
const Timeout = 5 * time.Second

// Target says where a process's liveness endpoint listens.
type Target struct {
	Command     string // "cao-api healthcheck", for messages
	AddrVar     string // the environment variable holding the listen address, e.g. CAO_HTTP_ADDR
	DefaultAddr string // the address when the variable is unset; empty: the variable is required
	Why         string // appended to the message when the variable is required and unset
}

// API is cao-api's listener: CAO_HTTP_ADDR (default :8000), GET /health.
var API = Target{Command: "cao-api healthcheck", AddrVar: "CAO_HTTP_ADDR", DefaultAddr: ":8000"}

// Worker is cao-worker's metrics listener: CAO_METRICS_ADDR, GET /health. A worker without
// CAO_METRICS_ADDR serves no HTTP at all, so there is nothing to ask: the check fails and says so.
var Worker = Target{
	Command: "cao-worker healthcheck", AddrVar: "CAO_METRICS_ADDR",
	Why: "the worker serves /health only on CAO_METRICS_ADDR; set it (e.g. :9091) to use the healthcheck",
}

// Main runs the check for t with the environment lookup and returns the exit status: 0 when the
// process answers 200 {"status": "ok"}, 1 otherwise, with the reason on stderr. (Docker reserves
// exit status 2 of a HEALTHCHECK command, so usage errors are 1 as well.)
func Main(ctx context.Context, t Target, args []string, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "%s: takes no arguments (it reads %s), got %q\n", t.Command, t.AddrVar, args)
		return 1
	}
	addr, ok := lookup(t.AddrVar)
	addr = strings.TrimSpace(addr)
	if !ok || addr == "" {
		if t.DefaultAddr == "" {
			fmt.Fprintf(stderr, "%s: %s is not set: %s\n", t.Command, t.AddrVar, t.Why)
			return 1
		}
		addr = t.DefaultAddr
	}
	u, err := LocalURL(addr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s: %v\n", t.Command, t.AddrVar, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := Check(ctx, u+"/health"); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", t.Command, err)
		return 1
	}
	return 0
}

// LocalURL is the http:// base URL to reach a process listening on addr from the same host:
// ":8000" and "0.0.0.0:8000" (any address) become 127.0.0.1:8000, "[::]:8000" becomes [::1]:8000,
// and a specific host is kept.
func LocalURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", addr, err)
	}
	if port == "" || port == "0" {
		return "", fmt.Errorf("listen address %q has no fixed port", addr)
	}
	switch ip := net.ParseIP(host); {
	case host == "":
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified() && ip.To4() != nil:
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// Check GETs url and returns nil when it answers 200 with {"status": "ok"}.
func Check(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "cao-healthcheck")
	// No proxy: the process is local, whatever HTTP_PROXY says.
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s answered %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var out struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Status != "ok" {
		return errors.Join(fmt.Errorf("GET %s answered %q, expected {\"status\":\"ok\"}", url, strings.TrimSpace(string(body))), err)
	}
	return nil
}

package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// apiClient is a small HTTP client for one cao-api process, with enough idle connections for the
// bench's concurrent clients.
type apiClient struct {
	base string
	hc   *http.Client
}

func newAPIClient(base string) *apiClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 256
	return &apiClient{base: base, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// close drops the client's idle connections.
func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// createdJob is the answer of POST /api/v1/jobs.
type createdJob struct {
	JobID      string `json:"job_id"`
	MonitorURL string `json:"monitor_url"`
}

// postJob creates a job of feature with an empty input and returns its id and monitor URL.
func (c *apiClient) postJob(ctx context.Context, feature string) (createdJob, error) {
	body := fmt.Appendf(nil, `{"feature_name":%q,"input_data":{}}`, feature)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v1/jobs", bytes.NewReader(body))
	if err != nil {
		return createdJob{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return createdJob{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return createdJob{}, err
	}
	if resp.StatusCode != http.StatusAccepted {
		return createdJob{}, fmt.Errorf("POST /api/v1/jobs: %s: %s", resp.Status, raw)
	}
	var out createdJob
	if err := json.Unmarshal(raw, &out); err != nil {
		return createdJob{}, fmt.Errorf("POST /api/v1/jobs: %w: %s", err, raw)
	}
	return out, nil
}

// get sends GET path and fails unless the answer is 200; the body is read and dropped.
func (c *apiClient) get(ctx context.Context, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %.300s", path, resp.Status, raw)
	}
	return nil
}

// postMany creates n jobs of feature from clients concurrent goroutines and returns the time just
// before the first POST was sent.
func postMany(ctx context.Context, c *apiClient, feature string, n, clients int) (time.Time, error) {
	var (
		next    atomic.Int64
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if _, err := c.postJob(ctx, feature); err != nil {
					errOnce.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	return start, first
}

// loadResult is what a closed-loop load run measured.
type loadResult struct {
	ops       int
	errors    int
	firstErr  error
	elapsed   time.Duration
	latencies []time.Duration
}

// perSecond is the rate of successful operations.
func (r loadResult) perSecond() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

// runClosedLoop runs op from clients goroutines back to back for d and records the latency of each
// successful call.
func runClosedLoop(ctx context.Context, clients int, d time.Duration, op func(context.Context) error) loadResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu  sync.Mutex
		res loadResult
		wg  sync.WaitGroup
	)
	start := time.Now()
	for range clients {
		wg.Go(func() {
			var lat []time.Duration
			var errs int
			var firstErr error
			for ctx.Err() == nil {
				t0 := time.Now()
				err := op(ctx)
				if ctx.Err() != nil {
					break // cut off by the end of the run: neither a success nor an error
				}
				if err != nil {
					errs++
					firstErr = cmp.Or(firstErr, err)
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			res.ops += len(lat)
			res.errors += errs
			res.firstErr = cmp.Or(res.firstErr, firstErr)
			res.latencies = append(res.latencies, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

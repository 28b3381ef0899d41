package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/coder/websocket"
)

// Shape of the start-latency scenario.
const (
	latencySamples = 100
	idleWindow     = 5 * time.Second
)

// runLatency measures target 2 on an idle system: the time from just before POST /api/v1/jobs to the
// first sight of its step RUNNING (or later) on the job's WebSocket, 100 jobs one after the other,
// and then the CPU an idle worker uses. The floor is raw Asynq's enqueue-to-handler latency and the
// CPU of an idle Asynq server, both polling empty queues every 10 ms.
func runLatency(ctx context.Context, e *env) []row {
	const (
		scLatency = "start latency: POST → step RUNNING seen on /ws, 100 sequential one-step jobs, idle 1 API + 1 worker"
		scCPU     = "idle CPU of one worker (5 s), % of one core"
	)
	progress("raw asynq idle floor: %d sequential tasks, then %s idle", latencySamples, idleWindow)
	floorLat, floorCPU, ferr := idleFloor(ctx, e.opts, latencySamples, idleWindow)

	progress("CAO start latency: %d sequential jobs", latencySamples)
	lat, seen, fromSnapshot, workerCPU, apiCPU, err := caoLatency(ctx, e)
	if err != nil {
		progress("  error: %v", err)
		return []row{errorRow("2", scLatency, err), errorRow("2", scCPU, err)}
	}
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	latRow := row{
		target: "2", scenario: scLatency,
		cao: fmt.Sprintf("p50 %s, p99 %s (%d of %d seen in the snapshot; counted when the snapshot arrived instead: p50 %s, p99 %s)",
			fmtDur(p50), fmtDur(p99), fromSnapshot, len(lat), fmtDur(percentile(seen, 50)), fmtDur(percentile(seen, 99))),
		goal: "lower is better; p50 near the floor",
	}
	cpuRow := row{
		target: "2", scenario: scCPU,
		cao:  fmt.Sprintf("worker %.2f%% (API %.2f%%)", workerCPU, apiCPU),
		goal: "worker < 2%" + verdict(workerCPU < 2),
	}
	if ferr != nil {
		latRow.floor, latRow.ratio = errCell(ferr), "—"
		cpuRow.floor, cpuRow.ratio = errCell(ferr), "—"
	} else {
		fp50, fp99 := percentile(floorLat, 50), percentile(floorLat, 99)
		latRow.floor = fmt.Sprintf("p50 %s, p99 %s (asynq enqueue → handler, 10 ms poll)", fmtDur(fp50), fmtDur(fp99))
		latRow.ratio = fmt.Sprintf("p50 %s, p99 %s", ratio(float64(p50), float64(fp50)), ratio(float64(p99), float64(fp99)))
		cpuRow.floor = fmt.Sprintf("%.2f%% (idle asynq server, 10 ms poll, in-process)", floorCPU)
		cpuRow.ratio = ratio(workerCPU, floorCPU)
	}
	progress("  CAO %s; worker CPU %.2f%%", latRow.cao, workerCPU)
	return []row{latRow, cpuRow}
}

// caoLatency runs the start-latency samples on a fresh 1 API + 1 worker cluster, then measures the
// idle CPU of the worker and the API. lat are the samples (startLatency's d), seen the same with the
// samples found in the snapshot counted when the snapshot arrived (an upper bound: the client
// connected only after the POST returned).
func caoLatency(ctx context.Context, e *env) (lat, seen []time.Duration, fromSnapshot int, workerCPU, apiCPU float64, err error) {
	c, err := e.startCluster(ctx, clusterSpec{registry: registryYAML("", 0), workers: 1, concurrency: chainConcurrency})
	if err != nil {
		return nil, nil, 0, 0, 0, err
	}
	defer c.stop()
	cl := c.client()
	defer cl.close()
	for i := range latencySamples {
		d, at, snap, err := startLatency(ctx, cl)
		if err != nil {
			return nil, nil, 0, 0, 0, fmt.Errorf("sample %d: %w", i, err)
		}
		lat, seen = append(lat, d), append(seen, at)
		if snap {
			fromSnapshot++
		}
	}
	worker, api := c.workers[0], c.api
	// Both windows overlap: the processes are idle, and measuring them together halves the wait.
	type res struct {
		pct float64
		err error
	}
	apiRes := make(chan res, 1)
	go func() {
		pct, err := idleCPU(ctx, idleWindow, api.cpuTime)
		apiRes <- res{pct, err}
	}()
	workerCPU, err = idleCPU(ctx, idleWindow, worker.cpuTime)
	ar := <-apiRes
	if err = errors.Join(err, ar.err); err != nil {
		return nil, nil, 0, 0, 0, err
	}
	return lat, seen, fromSnapshot, workerCPU, ar.pct, nil
}

// wsMessage is the part of a /ws message the bench reads.
type wsMessage struct {
	Type   string `json:"type"`
	Step   string `json:"step"`
	Status string `json:"status"`
	Job    *struct {
		Steps []struct {
			Status    string     `json:"status"`
			StartedAt *time.Time `json:"started_at"`
		} `json:"steps"`
	} `json:"job"`
}

// startedStatuses are the step statuses that prove the step has started.
var startedStatuses = map[string]bool{"RUNNING": true, "SUCCEEDED": true, "FAILED": true, "RETRYING": true}

// startLatency posts one single-step job, connects to its monitor_url and returns the time from just
// before the POST to the first sight of its step started. When the snapshot already shows the step
// started, the step's started_at (same machine clock) stands for the sight, and snap is true; seen is
// then the snapshot's arrival instead (d otherwise). It then reads until the server closes the socket
// after the job ended, so that samples do not overlap.
func startLatency(ctx context.Context, cl *apiClient) (d, seen time.Duration, snap bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	t0 := time.Now()
	job, err := cl.postJob(ctx, featureSingle)
	if err != nil {
		return 0, 0, false, err
	}
	conn, _, err := websocket.Dial(ctx, job.MonitorURL, nil)
	if err != nil {
		return 0, 0, false, fmt.Errorf("dial %s: %w", job.MonitorURL, err)
	}
	defer func() { _ = conn.CloseNow() }()
	conn.SetReadLimit(1 << 22)
	found := false
	readCtx := ctx
	for {
		_, data, err := conn.Read(readCtx)
		if err != nil {
			if found {
				return d, seen, snap, nil // measured; how the stream ended does not matter here
			}
			return 0, 0, false, fmt.Errorf("read %s: %w", job.MonitorURL, err)
		}
		now := time.Now()
		if found {
			continue
		}
		var m wsMessage
		if err := json.Unmarshal(data, &m); err != nil {
			return 0, 0, false, fmt.Errorf("decode %.200s: %w", data, err)
		}
		switch {
		case m.Type == "snapshot" && m.Job != nil:
			for _, s := range m.Job.Steps {
				if startedStatuses[s.Status] && s.StartedAt != nil {
					d, seen, snap, found = max(s.StartedAt.Sub(t0), 0), now.Sub(t0), true, true
				}
			}
		case m.Type == "step" && startedStatuses[m.Status]:
			d, found = now.Sub(t0), true
			seen = d
		}
		if found {
			// Drain until the server closes after the job ended, but never long.
			var cancelDrain context.CancelFunc
			readCtx, cancelDrain = context.WithTimeout(ctx, 5*time.Second)
			defer cancelDrain()
		}
	}
}

package caller

import (
	"context"
	"encoding/json"
	"time"

	"github.com/cao-run/cao/pkg/render"
)

// mockOutput is the default output of a mock service: who was called, with what.
type mockOutput struct {
	Service        string          `json:"service"`
	Step           string          `json:"step"`
	Attempt        int             `json:"attempt"`
	Run            int             `json:"run"`
	IdempotencyKey string          `json:"idempotency_key"`
	Input          json.RawMessage `json:"input"`
	Echo           any             `json:"echo,omitempty"` // the rendered request body, when the step has one
}

// callMock simulates a service: it waits Mock.Latency (within the step timeout), fails the first
// Mock.FailTimes attempts of each run and then a Mock.FailureRate share of attempts, and otherwise
// returns the rendered Mock.OutputTemplate or an echo of the call.
func (c *Caller) callMock(ctx context.Context, call Call) (Result, *Error) {
	svc, step := call.Service, call.Step
	spec := step.Mock

	// Render first: a template error is the step's fault and should not cost the latency. The data
	// is decoded by the first template that reads it (render.Data); the default output echoes the
	// input as stored.
	var echo any
	if step.Request != nil && step.Request.BodyTemplate != nil {
		v, err := step.Request.BodyTemplate.Execute(call.Data)
		if err != nil {
			return Result{}, templateError(svc, step, "body", err)
		}
		echo = v
	}
	var out any
	if spec.OutputTemplate != nil {
		v, err := spec.OutputTemplate.Execute(call.Data)
		if err != nil {
			return Result{}, newError(svc, ClassTemplate, false, 0, "step %q: render mock output: %v", step.Name, err)
		}
		out = v
	} else {
		input, err := call.Data.InputJSON()
		if err != nil {
			return Result{}, newError(svc, ClassTemplate, false, 0, "step %q: encode the input: %v", step.Name, err)
		}
		out = mockOutput{
			Service:        svc.Name,
			Step:           step.Name,
			Attempt:        call.Attempt,
			Run:            call.Run,
			IdempotencyKey: call.IdempotencyKey,
			Input:          input,
			Echo:           echo,
		}
	}

	if spec.Latency > 0 {
		timeout := timeoutOf(step, svc)
		callCtx, cancel := withStepTimeout(ctx, timeout)
		timer := time.NewTimer(spec.Latency)
		select {
		case <-timer.C:
			cancel()
		case <-callCtx.Done():
			timer.Stop()
			err := contextError(ctx, callCtx, svc, timeout)
			cancel()
			return Result{}, err
		}
	}

	if call.Attempt <= spec.FailTimes {
		return Result{}, newError(svc, ClassMock, true, 0,
			"mock failure (attempt %d of fail_times %d)", call.Attempt, spec.FailTimes)
	}
	if spec.FailureRate > 0 && c.cfg.Rand() < spec.FailureRate {
		return Result{}, newError(svc, ClassMock, true, 0,
			"mock random failure (failure_rate %g)", spec.FailureRate)
	}

	b, err := render.MarshalJSON(out)
	if err != nil {
		return Result{}, newError(svc, ClassInvalidResponse, false, 0, "step %q: encode mock output: %v", step.Name, err)
	}
	return Result{Output: redactJSON(svc, b)}, nil
}

package runner

// This file is the worker's side of a service's budgets (rate_limit and rate_limits, package
// limiter's Budgets) and of its limit per key (concurrency_key, keys.go): what a step asks of them,
// computed before admission, and how a call's answer settles what it reserved.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/cao-run/cao/pkg/caller"
	"github.com/cao-run/cao/pkg/limiter"
	"github.com/cao-run/cao/pkg/orchestrator"
	"github.com/cao-run/cao/pkg/registry"
	"github.com/cao-run/cao/pkg/render"
)

// plan is what a step's limits ask of its call, known before admission.
type plan struct {
	asks   []limiter.Ask // one per budget of the service, in the registry's order
	key    string        // the semaphore of the step's key value; "" without a limit per key
	keyMax int
	// fail is set when a template the limits need cannot be rendered (the key, a reserve, or the
	// request a reserve reads): the step fails at once, like a request that cannot be rendered.
	fail error
}

// limited reports whether a step of svc needs admission beyond a slot: budgets or a limit per key.
func limited(st *registry.Step, svc *registry.Service) bool {
	return len(svc.RateLimits) > 0 || (st != nil && st.KeyLimit != nil)
}

// needsData reports whether admitting a step of svc needs the step's template data (read from the
// database before the claim): for its key, or a reserve that is a template. Other services admit
// without it, so their hot path is unchanged.
func needsData(st *registry.Step, svc *registry.Service) bool {
	if st != nil && st.KeyLimit != nil {
		return true
	}
	for _, b := range svc.RateLimits {
		if b.Reserve.Template != nil {
			return true
		}
	}
	return false
}

// budgetOf is the limiter's form of a registry budget, its window widened by rateSlack.
func budgetOf(b registry.Budget) limiter.Budget {
	kind := limiter.RequestBudget
	if b.Kind == registry.BudgetUnits {
		kind = limiter.UnitBudget
	}
	return limiter.Budget{Name: b.ID, Kind: kind, Limit: b.Limit, Per: b.Per + rateSlack}
}

// plan works out what the step of t asks of its service's limits: the units each budget reserves
// and the key its calls are counted by. It reads the step's template data only when they need it.
// ErrStale (from the read) means the task no longer matches its step.
func (r *Runner) plan(ctx context.Context, t *orchestrator.Target) (*plan, error) {
	if !needsData(t.Step, t.Service) {
		return planFor(t, nil), nil
	}
	sd, err := r.orch.Peek(ctx, t)
	if err != nil {
		return nil, err
	}
	return planFor(t, sd), nil
}

// planFor is plan once the step's data is read (sd, nil when its limits do not need it). A template
// that cannot be rendered is the plan's fail, the step's error.
func planFor(t *orchestrator.Target, sd *orchestrator.StepData) *plan {
	svc, st := t.Service, t.Step
	p := &plan{}
	var data map[string]any
	if sd != nil {
		d := render.Stored(t.Payload.JobID, t.Payload.Step, t.Payload.Attempt, t.Payload.Run, sd.Input, sd.Outputs)
		var err error
		data, err = d.Map()
		if err != nil {
			p.fail = err
			return p
		}
		if kl := st.KeyLimit; kl != nil {
			v, err := kl.Template.ExecuteString(data)
			if err != nil {
				p.fail = limitError(svc, st, "concurrency_key", kl.Path, err)
				return p
			}
			if v != "" { // an empty key value: no limit per key for this call
				p.key, p.keyMax = keySemaphore(svc.Name, v), kl.Max
			}
		}
		req, err := caller.RenderRequest(caller.Call{JobID: t.Payload.JobID, Step: st, Service: svc,
			Run: t.Payload.Run, Attempt: t.Payload.Attempt, Data: d})
		if err != nil {
			p.fail = err // the call itself would fail so: a template error of the step
			return p
		}
		data["request"] = req.Data()
	}
	for _, b := range svc.RateLimits {
		ask := limiter.Ask{Budget: budgetOf(b)}
		if b.Kind == registry.BudgetUnits {
			n, err := reserveOf(b, data)
			if err != nil {
				p.fail = limitError(svc, st, "reserve", b.Path+".reserve", err)
				return p
			}
			ask.Units = n
		}
		p.asks = append(p.asks, ask)
	}
	return p
}

// reserveOf is what a call takes from units budget b before it leaves: its reserve, or its cost
// when that is a constant, or nothing (the call then needs one free unit, and its cost counts once
// the answer says it).
func reserveOf(b registry.Budget, data map[string]any) (int64, error) {
	switch {
	case b.Reserve.IsConst():
		return b.Reserve.Const, nil
	case b.Reserve.Template != nil:
		v, err := b.Reserve.Template.Execute(data)
		if err != nil {
			return 0, err
		}
		return unitsOf(v)
	case b.Cost.IsConst():
		return b.Cost.Const, nil
	}
	return 0, nil
}

// unitsOf reads a rendered amount: a number, or a string holding one; a fraction counts as the
// next whole unit. The error names the type, never the value.
func unitsOf(v any) (int64, error) {
	var f float64
	switch x := v.(type) {
	case int:
		f = float64(x)
	case int64:
		f = float64(x)
	case int32:
		f = float64(x)
	case uint64:
		f = float64(x)
	case float64:
		f = x
	case json.Number:
		var err error
		if f, err = strconv.ParseFloat(x.String(), 64); err != nil {
			return 0, errors.New("renders a malformed number")
		}
	case string:
		var err error
		if f, err = strconv.ParseFloat(strings.TrimSpace(x), 64); err != nil {
			return 0, errors.New("renders a string that is not a number")
		}
	case nil:
		return 0, errors.New("renders null, want a number")
	default:
		return 0, fmt.Errorf("renders %s, want a number", kindOf(v))
	}
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return 0, errors.New("renders a number that is not finite")
	case f < 0:
		return 0, errors.New("renders a negative number")
	case f > limiter.MaxBudgetUnits:
		return limiter.MaxBudgetUnits, nil
	}
	return int64(math.Ceil(f)), nil
}

func kindOf(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("a %T", v)
}

// limitError is the step's error when a template of its limits cannot be rendered: a template
// error, not retried, with the service's secrets redacted.
func limitError(svc *registry.Service, st *registry.Step, what, path string, err error) error {
	msg := fmt.Sprintf("step %q: render %s (%s): %v", st.Name, what, path, err)
	return &caller.Error{Class: caller.ClassTemplate, Message: svc.Redact(msg)}
}

// settle tells the budgets the call of a was answered (its entries move to the answer's time, which
// is after the provider counted it) and what it cost: for each units budget with a cost, the cost
// its answer gives (a cost that cannot be read keeps the reservation, with a warning). A call that
// never left (its request could not be rendered) gives back everything it reserved.
func (r *Runner) settle(ctx context.Context, a *orchestrator.Attempt, adm *admission, data render.Data, res caller.Result, callErr error) {
	if adm.grant.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), adaptTimeout)
	defer cancel()
	svc := a.Service
	var ce *caller.Error
	if callErr != nil && errors.As(callErr, &ce) && ce.Class == caller.ClassTemplate {
		if err := r.rate.Cancel(ctx, adm.grant); err != nil {
			r.cfg.Logger.Warn("budgets: give back an unsent call's reservation", "service", svc.Name, "err", err)
		}
		return
	}
	// Without an answer the provider may still have counted the call: it keeps what it reserved.
	if callErr != nil {
		if err := r.rate.Settle(ctx, adm.grant, nil); err != nil {
			r.cfg.Logger.Warn("budgets: record a call's end", "service", svc.Name, "err", err)
		}
		return
	}
	costs := make([]int64, len(svc.RateLimits))
	settles := false
	var (
		tdata map[string]any
		terr  error // the call's data could not be decoded: no cost template can be read
	)
	for i, b := range svc.RateLimits {
		costs[i] = -1
		switch {
		case b.Kind != registry.BudgetUnits || !b.Cost.Set:
		case b.Cost.IsConst():
			costs[i], settles = b.Cost.Const, true
		default:
			if tdata == nil && terr == nil {
				tdata, terr = costData(a, data, res)
			}
			v, err := any(nil), terr
			if err == nil {
				v, err = b.Cost.Template.Execute(tdata)
			}
			var n int64
			if err == nil {
				n, err = unitsOf(v)
			}
			if err != nil {
				r.cfg.Logger.Warn("budget cost of the answer cannot be read; the call keeps its reservation",
					"service", svc.Name, "budget", b.Path, "job_id", a.Payload.JobID, "step", a.Payload.Step, "err", svc.Redact(err.Error()))
				continue
			}
			costs[i], settles = n, true
		}
	}
	if !settles {
		costs = nil
	}
	if err := r.rate.Settle(ctx, adm.grant, costs); err != nil {
		r.cfg.Logger.Warn("budgets: settle a call's cost", "service", svc.Name, "err", err)
	}
}

// costData is the data of a cost template: the call's template data, its request and its answer.
func costData(a *orchestrator.Attempt, data render.Data, res caller.Result) (map[string]any, error) {
	m, err := data.Map()
	if err != nil {
		return nil, err
	}
	req, _ := caller.RenderRequest(caller.Call{JobID: a.Payload.JobID, Step: a.Step, Service: a.Service,
		Run: a.Payload.Run, Attempt: a.Payload.Attempt, Data: data}) // it rendered for the call
	m["request"] = req.Data()
	resp, err := render.DecodeJSON(res.Output)
	if err != nil {
		resp = nil
	}
	m["response"] = resp
	return m, nil
}

// cancelUnsent gives back the budgets of an admission whose call never left (the step was claimed
// by another worker, or its leases were lost before the call).
func (r *Runner) cancelUnsent(ctx context.Context, adm *admission) {
	if adm.grant.ID == "" || adm.sent {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.rate.Cancel(ctx, adm.grant); err != nil {
		r.cfg.Logger.Warn("budgets: give back an unsent call's reservation", "service", adm.grant.Service, "err", err)
	}
	adm.grant = limiter.Grant{}
}

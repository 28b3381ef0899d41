// Package task is the contract between the API, the relay and the workers: the Asynq task types CAO
// enqueues, their payloads and their deterministic task ids.
package task

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cao-run/cao/pkg/store"
)

// TypeStep is the Asynq task type that runs one attempt of one step.
const TypeStep = "cao:step"

// StepPayload names the attempt a step task is for. A task whose (Run, Attempt) no longer matches the
// step's state in the database is stale and acknowledged without effect.
type StepPayload struct {
	JobID string `json:"job_id"`
	// Feature names the job's feature, so a worker finds the step's service without reading the
	// job first. Empty in tasks enqueued before it was added.
	Feature string `json:"feature,omitempty"`
	Step    string `json:"step"`
	Run     int    `json:"run"`
	Attempt int    `json:"attempt"`
	// Tenant is the job's tenant, so a worker can share a saturated service fairly between tenants
	// without reading the job. Empty in tasks enqueued before it was added and in tasks the
	// reconciler re-enqueues (the worker then reads it with the job).
	Tenant string `json:"tenant,omitempty"`
	// Since is when the step first waited for its service (µs since the epoch), carried by the
	// copies of a waiting step's task so the step keeps its place among its tenant's waiting steps.
	// Zero until the step first waits.
	Since int64 `json:"since,omitempty"`
	// Failed is set on the task of a step that a worker took through the bell and that failed for
	// good: the worker that gets it fails it at once with this message, so Asynq archives it with
	// its error, as it does the tasks it hands out. Empty otherwise.
	Failed string `json:"failed,omitempty"`
	// Snap is the step's job as the change that queued the task left it, carried by the copy the
	// committing process hands to the queue at once (never by the outbox's copy), so that the worker
	// claims the step without reading the job first. Its format is the orchestrator's; a worker that
	// cannot use it reads the job. Empty otherwise.
	Snap json.RawMessage `json:"snap,omitempty"`
}

// Marshal encodes the payload.
func (p StepPayload) Marshal() []byte {
	b, _ := json.Marshal(p) // cannot fail: plain strings and ints, and Snap is valid JSON or empty
	return b
}

// WithSnap returns encoded step payload b carrying snap as its Snap (b carries none), without
// decoding b: b is a JSON object, as Marshal writes it, and snap valid JSON.
func WithSnap(b []byte, snap json.RawMessage) []byte {
	out := make([]byte, 0, len(b)+len(snap)+len(`,"snap":`))
	out = append(out, b[:len(b)-1]...)
	out = append(out, `,"snap":`...)
	out = append(out, snap...)
	return append(out, '}')
}

// StepOfTaskID returns the step name in a step task's id (TaskID), or "" if id is not one.
func StepOfTaskID(id string) string {
	parts := strings.SplitN(id, ":", 5)
	if len(parts) != 5 || parts[0] != "step" {
		return ""
	}
	return parts[4]
}

// ParseStepPayload decodes and checks a step task payload.
func ParseStepPayload(b []byte) (StepPayload, error) {
	var p StepPayload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("decode step payload: %w", err)
	}
	if p.JobID == "" || p.Step == "" || p.Run < 1 || p.Attempt < 1 {
		return p, fmt.Errorf("invalid step payload %s", b)
	}
	return p, nil
}

// TaskID is the deterministic Asynq task id of this attempt: enqueueing it twice is harmless.
func (p StepPayload) TaskID() string {
	return "step:" + p.JobID + ":" + strconv.Itoa(p.Run) + ":" + strconv.Itoa(p.Attempt) + ":" + p.Step
}

// IdempotencyKey is the key sent to the service for every attempt of this run.
func IdempotencyKey(jobID, step string, run int) string {
	return jobID + "/" + step + "/" + strconv.Itoa(run)
}

// ForStep is the task of waiting step s's next attempt, as the outbox holds it: a step of a job of
// feature and tenant (either may be empty when unknown) whose status is QUEUED, or RETRYING with the attempt due
// at s.NextAttemptAt (the task is then scheduled for that time when it is after now).
func ForStep(s *store.Step, feature, tenant string, now time.Time) store.OutboxTask {
	p := StepPayload{JobID: s.JobID, Feature: feature, Tenant: tenant, Step: s.Name, Run: s.Run, Attempt: s.Attempts + 1}
	t := store.OutboxTask{TaskID: p.TaskID(), Queue: s.Queue, TypeName: TypeStep, Payload: p.Marshal(), CreatedAt: now}
	if s.Status == store.StepRetrying && s.NextAttemptAt != nil && s.NextAttemptAt.After(now) {
		at := *s.NextAttemptAt
		t.ProcessAt = &at
	}
	return t
}

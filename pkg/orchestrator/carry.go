package orchestrator

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/cao-run/cao/pkg/store"
	"github.com/cao-run/cao/pkg/task"
)

// A committed change leaves its job in a state its committer knows exactly: the unit's snapshot.
// When a change queues a step to run now and leaves the job quiet for it (snapshot.quiet: nothing
// else waits or runs), the copy of the step's task that the committer hands to the queue at once
// carries that snapshot (task.StepPayload.Snap), and the worker that takes the task claims the step
// from it in one statement instead of reading the job first (StartAttemptFrom). This is how a job's
// first step starts: the API's create is the change that queues it.
//
// The outbox keeps the plain task: its copy is sent only when the committer could not hand the task
// over (it crashed, Redis was unreachable), and the worker then reads the job. A carried snapshot is
// trusted exactly as a read is: the claim is a compare-and-set on the job's version, so a job that
// moved on since the task was queued (cancelled, resumed) refuses the claim and is read again.

// carriedFormat is the version of the carried snapshot's encoding. A worker that finds another
// reads the job, so API and workers of different releases work together.
const carriedFormat = 1

// maxCarriedInput is the largest job input a carried snapshot holds: a larger one would be stored
// twice more (the queued task and the bell's ring) for a read that costs little next to it.
const maxCarriedInput = 4 << 10

// carriedSnapshot is the encoding of a snapshot in a task. Every field of store.Job and store.Step
// is in it (TestCarriedSnapshotKeepsEveryField), so that a claim from it writes back exactly what a
// claim from a read would.
type carriedSnapshot struct {
	Format int           `json:"v"`
	Job    carriedJob    `json:"job"`
	Steps  []carriedStep `json:"steps"`
}

type carriedJob struct {
	ID             string          `json:"id"`
	Tenant         string          `json:"tenant"`
	FeatureName    string          `json:"feature"`
	Status         store.JobStatus `json:"status"`
	Input          json.RawMessage `json:"input"`
	InputVersion   int             `json:"input_version"`
	Output         json.RawMessage `json:"output,omitempty"`
	Error          string          `json:"error,omitempty"`
	LastSeq        int64           `json:"last_seq"`
	Version        int64           `json:"version"`
	StuckAt        *time.Time      `json:"stuck_at,omitempty"`
	StuckReason    string          `json:"stuck_reason,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	WebhookURL     string          `json:"webhook_url,omitempty"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	StartedAt      *time.Time      `json:"started_at,omitempty"`
	FinishedAt     *time.Time      `json:"finished_at,omitempty"`
}

// carriedStep is a step of the carried job (its JobID is the job's, not encoded).
type carriedStep struct {
	JobID          string           `json:"-"`
	Name           string           `json:"name"`
	Position       int              `json:"position"`
	Service        string           `json:"service"`
	Queue          string           `json:"queue"`
	Needs          []string         `json:"needs"`
	Status         store.StepStatus `json:"status"`
	Run            int              `json:"run"`
	Attempts       int              `json:"attempts"`
	Lost           int              `json:"lost,omitempty"`
	LeaseOwner     string           `json:"lease_owner,omitempty"`
	LeaseExpiresAt *time.Time       `json:"lease_expires_at,omitempty"`
	NextAttemptAt  *time.Time       `json:"next_attempt_at,omitempty"`
	Output         json.RawMessage  `json:"output,omitempty"`
	Error          string           `json:"error,omitempty"`
	ErrorClass     string           `json:"error_class,omitempty"`
	CreatedAt      time.Time        `json:"created_at"`
	UpdatedAt      time.Time        `json:"updated_at"`
	StartedAt      *time.Time       `json:"started_at,omitempty"`
	FinishedAt     *time.Time       `json:"finished_at,omitempty"`
}

// encodeCarried encodes sn for a task. carriedJob and carriedStep have store.Job's and store.Step's
// fields, in their order, so each converts to the other: a field added to one and not the other
// does not compile.
func encodeCarried(sn *snapshot) (json.RawMessage, error) {
	c := carriedSnapshot{Format: carriedFormat, Job: carriedJob(sn.job), Steps: make([]carriedStep, len(sn.steps))}
	for i, s := range sn.steps {
		c.Steps[i] = carriedStep(s)
	}
	return json.Marshal(c)
}

// decodeCarried decodes the snapshot a task of job jobID carries; false when there is none or it
// is not one this release reads.
func decodeCarried(b json.RawMessage, jobID string) (*snapshot, bool) {
	var c carriedSnapshot
	if len(b) == 0 || json.Unmarshal(b, &c) != nil || c.Format != carriedFormat || c.Job.ID != jobID {
		return nil, false
	}
	sn := &snapshot{job: store.Job(c.Job), steps: make([]store.Step, len(c.Steps))}
	for i, s := range c.Steps {
		s.JobID = jobID
		if s.Needs == nil {
			s.Needs = []string{}
		}
		sn.steps[i] = store.Step(s)
	}
	return sn, true
}

// carry returns the tasks of committed unit u to hand to the queue: its outbox, with the snapshot
// carried by the task of a step to run now that the change leaves quiet.
func (o *Orchestrator) carry(u *unit) []store.OutboxTask {
	if len(u.job.Input) > maxCarriedInput {
		return u.outbox
	}
	tasks := u.outbox
	var (
		sn     *snapshot
		enc    json.RawMessage
		cloned bool
	)
	for i, t := range u.outbox {
		if t.TypeName != task.TypeStep || t.ProcessAt != nil {
			continue
		}
		step := task.StepOfTaskID(t.TaskID)
		if sn == nil {
			sn = u.snapshot()
		}
		if step == "" || !sn.quiet(step) {
			continue
		}
		if enc == nil {
			var err error
			if enc, err = encodeCarried(sn); err != nil {
				o.cfg.Logger.Warn("encode a task's snapshot; the worker reads the job", "job_id", u.job.ID, "err", err)
				return u.outbox
			}
		}
		if !cloned {
			tasks, cloned = slices.Clone(u.outbox), true // the outbox's copies stay plain
		}
		tasks[i].Payload = task.WithSnap(t.Payload, enc)
	}
	return tasks
}

// carried returns the snapshot t's task carries, or nil.
func carried(t *Target) *Snapshot {
	sn, ok := decodeCarried(t.Payload.Snap, t.Payload.JobID)
	if !ok {
		return nil
	}
	return &Snapshot{snap: sn}
}

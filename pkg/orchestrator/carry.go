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

// carriedSnapshot is a snapshot as a task carries it (encodeCarried writes it, decodeCarried reads
// it). Every field of store.Job and store.Step is in it (TestCarriedSnapshotKeepsEveryField), so
// that a claim from it writes back exactly what a claim from a read would. carriedJob and
// carriedStep have store.Job's and store.Step's fields, in their order, so each converts to the
// other: a field added to one and not the other does not compile.
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

// encodeCarried encodes sn for a task: what json.Marshal would write for a carriedSnapshot (but for
// its HTML escaping, which decoding does not need), written by hand because a job's create runs it
// on the API's hot path (json.Marshal's reflection and its second pass over every raw value cost
// more than the rest of the encoding). decodeCarried reads it with encoding/json;
// TestCarriedSnapshotKeepsEveryField fails when a field is not written here.
func encodeCarried(sn *snapshot) (json.RawMessage, error) {
	w := &jsonWriter{b: make([]byte, 0, 512+len(sn.job.Input)+256*len(sn.steps))}
	w.open()
	w.int("v", carriedFormat)
	w.key("job")
	j := &sn.job
	w.open()
	w.str("id", j.ID)
	w.str("tenant", j.Tenant)
	w.str("feature", j.FeatureName)
	w.str("status", string(j.Status))
	w.raw("input", j.Input)
	w.int("input_version", int64(j.InputVersion))
	w.rawOpt("output", j.Output)
	w.strOpt("error", j.Error)
	w.int("last_seq", j.LastSeq)
	w.int("version", j.Version)
	w.timeOpt("stuck_at", j.StuckAt)
	w.strOpt("stuck_reason", j.StuckReason)
	w.strOpt("idempotency_key", j.IdempotencyKey)
	w.strOpt("webhook_url", j.WebhookURL)
	w.lifetime(j.CreatedAt, j.UpdatedAt, j.StartedAt, j.FinishedAt)
	w.close()
	w.key("steps")
	w.b = append(w.b, '[')
	for i := range sn.steps {
		if i > 0 {
			w.b = append(w.b, ',')
		}
		s := &sn.steps[i]
		w.open()
		w.str("name", s.Name)
		w.int("position", int64(s.Position))
		w.str("service", s.Service)
		w.str("queue", s.Queue)
		w.strs("needs", s.Needs)
		w.str("status", string(s.Status))
		w.int("run", int64(s.Run))
		w.int("attempts", int64(s.Attempts))
		w.intOpt("lost", int64(s.Lost))
		w.strOpt("lease_owner", s.LeaseOwner)
		w.timeOpt("lease_expires_at", s.LeaseExpiresAt)
		w.timeOpt("next_attempt_at", s.NextAttemptAt)
		w.rawOpt("output", s.Output)
		w.strOpt("error", s.Error)
		w.strOpt("error_class", s.ErrorClass)
		w.lifetime(s.CreatedAt, s.UpdatedAt, s.StartedAt, s.FinishedAt)
		w.close()
	}
	w.b = append(w.b, ']')
	w.close()
	if w.err != nil {
		return nil, w.err
	}
	return w.b, nil
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
		tasks[i].Carried = enc
	}
	return tasks
}

// lifetime writes the four times a job and a step share.
func (w *jsonWriter) lifetime(created, updated time.Time, started, finished *time.Time) {
	w.time("created_at", created)
	w.time("updated_at", updated)
	w.timeOpt("started_at", started)
	w.timeOpt("finished_at", finished)
}

// carried returns the snapshot t's task carries, or nil.
func carried(t *Target) *Snapshot {
	sn, ok := decodeCarried(t.Payload.Snap, t.Payload.JobID)
	if !ok {
		return nil
	}
	return &Snapshot{snap: sn}
}

package orchestrator

import (
	"encoding/json"
	"slices"

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
const carriedFormat = 2

// maxCarriedInput is the largest job input a carried snapshot holds: a larger one would be stored
// twice more (the queued task and the bell's ring) for a read that costs little next to it.
const maxCarriedInput = 4 << 10

// encodeCarried encodes sn for a task (carrycodec.go); decodeCarried reads it back.
// TestCarriedSnapshotKeepsEveryField fails when a field of store.Job or store.Step is not written.
func encodeCarried(sn *snapshot) json.RawMessage {
	j := &sn.job
	w := &snapWriter{b: make([]byte, 0, 256+len(j.Input)+len(j.Output)+128*len(sn.steps))}
	w.uint(carriedFormat)
	w.str(j.ID)
	w.str(j.Tenant)
	w.str(j.FeatureName)
	w.str(string(j.Status))
	w.raw(j.Input)
	w.int(int64(j.InputVersion))
	w.rawOpt(j.Output)
	w.str(j.Error)
	w.int(j.LastSeq)
	w.int(j.Version)
	w.timeOpt(j.StuckAt)
	w.str(j.StuckReason)
	w.str(j.IdempotencyKey)
	w.str(j.WebhookURL)
	w.lifetime(j.CreatedAt, j.UpdatedAt, j.StartedAt, j.FinishedAt)
	w.uint(uint64(len(sn.steps)))
	for i := range sn.steps {
		s := &sn.steps[i]
		w.str(s.Name)
		w.int(int64(s.Position))
		w.str(s.Service)
		w.str(s.Queue)
		w.strs(s.Needs)
		w.str(string(s.Status))
		w.int(int64(s.Run))
		w.int(int64(s.Attempts))
		w.int(int64(s.Lost))
		w.str(s.LeaseOwner)
		w.timeOpt(s.LeaseExpiresAt)
		w.timeOpt(s.NextAttemptAt)
		w.rawOpt(s.Output)
		w.str(s.Error)
		w.str(s.ErrorClass)
		w.lifetime(s.CreatedAt, s.UpdatedAt, s.StartedAt, s.FinishedAt)
	}
	return w.quoted()
}

// decodeCarried decodes the snapshot a task of job jobID carries; false when there is none or it
// is not one this release reads (another format, another job's, or not a snapshot at all).
func decodeCarried(b json.RawMessage, jobID string) (*snapshot, bool) {
	r := unquote(b)
	if r.uint() != carriedFormat {
		return nil, false
	}
	sn := &snapshot{}
	j := &sn.job
	if j.ID = r.str(); j.ID != jobID {
		return nil, false
	}
	j.Tenant = r.str()
	j.FeatureName = r.str()
	j.Status = store.JobStatus(r.str())
	j.Input = r.raw()
	j.InputVersion = r.small()
	j.Output = r.rawOpt()
	j.Error = r.str()
	j.LastSeq = r.int()
	j.Version = r.int()
	j.StuckAt = r.timeOpt()
	j.StuckReason = r.str()
	j.IdempotencyKey = r.str()
	j.WebhookURL = r.str()
	j.CreatedAt, j.UpdatedAt, j.StartedAt, j.FinishedAt = r.lifetime()
	n := r.count() // each step takes more than a byte
	sn.steps = make([]store.Step, n)
	for i := range sn.steps {
		s := &sn.steps[i]
		s.JobID = jobID
		s.Name = r.str()
		s.Position = r.small()
		s.Service = r.str()
		s.Queue = r.str()
		s.Needs = r.strs()
		s.Status = store.StepStatus(r.str())
		s.Run = r.small()
		s.Attempts = r.small()
		s.Lost = r.small()
		s.LeaseOwner = r.str()
		s.LeaseExpiresAt = r.timeOpt()
		s.NextAttemptAt = r.timeOpt()
		s.Output = r.rawOpt()
		s.Error = r.str()
		s.ErrorClass = r.str()
		s.CreatedAt, s.UpdatedAt, s.StartedAt, s.FinishedAt = r.lifetime()
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, false
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
			enc = encodeCarried(sn)
		}
		if !cloned {
			tasks, cloned = slices.Clone(u.outbox), true // the outbox's copies stay plain
		}
		tasks[i].Carried = enc
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

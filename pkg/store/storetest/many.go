package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cao-run/cao/pkg/store"
)

// ManyJobChanges creates n jobs in s and returns a change for each that starts its first step with
// two outbox tasks; every fifth change expects a version the job is no longer at, and every seventh
// a step state its step is not in, so both must be refused (store.ErrConflict) without writing a
// row. check verifies the outcome of applying the changes, errs[i] being what Apply returned for
// changes[i], however they were applied (one by one, concurrently, or sharing statements).
func ManyJobChanges(t *testing.T, s store.Store, n int) (changes []*store.Change, check func(errs []error)) {
	t.Helper()
	ctx := testContext(t)
	creates := make([]*store.Change, n)
	refused := make([]bool, n)
	for i := range n {
		c := createChange(base)
		require.NoError(t, s.Apply(ctx, c))
		creates[i] = c
		u := started(c, c.Job.Version, base.Add(time.Second+time.Duration(i)*time.Microsecond))
		u.Job.Output = []byte(fmt.Sprintf(`{"i": %d}`, i))
		for k := range 2 {
			u.Outbox = append(u.Outbox, store.OutboxTask{
				TaskID: fmt.Sprintf("%s-%d", c.Job.ID, k), Queue: "q", TypeName: "cao:step",
				Payload: []byte(fmt.Sprintf(`{"i": %d, "k": %d}`, i, k)), CreatedAt: base,
			})
		}
		switch {
		case i%5 == 4:
			u.Version--
			refused[i] = true
		case i%7 == 6:
			u.Steps[0].Expect.Attempts = 7
			refused[i] = true
		}
		changes = append(changes, u)
	}
	check = func(errs []error) {
		t.Helper()
		require.Len(t, errs, n)
		ids := outboxIDs(t, s)
		for i, u := range changes {
			if refused[i] {
				require.ErrorIs(t, errs[i], store.ErrConflict, "change %d", i)
				requireUnchangedBy(t, s, creates[i], u)
				for _, task := range u.Outbox {
					_, found := ids[task.TaskID]
					require.False(t, found, "change %d: a refused change's task is not in the outbox", i)
				}
				continue
			}
			require.NoError(t, errs[i], "change %d", i)
			job, steps, err := s.LoadJob(ctx, u.Job.ID)
			require.NoError(t, err)
			requireJob(t, u.Job, job)
			require.Equal(t, store.StepRunning, steps[0].Status)
			evs, err := s.ListEvents(ctx, u.Job.ID, 0, 0)
			require.NoError(t, err)
			require.Len(t, evs, int(u.Job.LastSeq))
			attempts, err := s.GetAttempts(ctx, u.Job.ID)
			require.NoError(t, err)
			require.Len(t, attempts, 1)
			require.Less(t, u.Outbox[0].ID, u.Outbox[1].ID, "change %d: ids in the order of its tasks", i)
			for _, task := range u.Outbox {
				require.Equal(t, ids[task.TaskID], task.ID, "change %d: the id Apply set is its task's row", i)
			}
		}
	}
	return changes, check
}

// outboxIDs returns the id of every task in the outbox, by task id.
func outboxIDs(t *testing.T, s store.Store) map[string]int64 {
	t.Helper()
	ctx := testContext(t)
	var tasks []store.OutboxTask
	require.NoError(t, s.Tx(ctx, func(tx store.Tx) error {
		var err error
		tasks, err = tx.ClaimOutbox(ctx, farFuture, 0)
		return err
	}))
	ids := make(map[string]int64, len(tasks))
	for _, task := range tasks {
		ids[task.TaskID] = task.ID
	}
	return ids
}

// applyAtOnce applies the changes concurrently, all released at the same moment, and returns what
// each Apply returned.
func applyAtOnce(ctx context.Context, s store.Store, changes []*store.Change) []error {
	errs := make([]error, len(changes))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range changes {
		wg.Go(func() {
			<-start
			errs[i] = s.Apply(ctx, c)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// requireUnchangedBy checks that refused change u wrote nothing: the job is as create c left it,
// with no attempt, no event and no task of u.
func requireUnchangedBy(t *testing.T, s store.Store, c, u *store.Change) {
	t.Helper()
	requireJobAsCreated(t, s, c)
	for _, task := range u.Outbox {
		require.Zero(t, task.ID, "a refused change's task has no id")
	}
}

// testApplyManyJobsAtOnce applies changes of many jobs concurrently, refused ones among them: each
// is written or refused on its own (on Postgres they share statements: group commit).
func testApplyManyJobsAtOnce(t *testing.T, s store.Store) {
	ctx := testContext(t)
	changes, check := ManyJobChanges(t, s, 40)
	check(applyAtOnce(ctx, s, changes))
}

// ManyJobCreates returns n changes that create jobs, every fourth with the id of a job that s holds
// already, so it must be refused (store.ErrDuplicate) without writing a row, and a check of the
// outcome as ManyJobChanges'.
func ManyJobCreates(t *testing.T, s store.Store, n int) (changes []*store.Change, check func(errs []error)) {
	t.Helper()
	ctx := testContext(t)
	taken := createChange(base)
	require.NoError(t, s.Apply(ctx, taken))
	dup := make([]bool, n)
	for i := range n {
		c := createChange(base.Add(time.Duration(i) * time.Microsecond))
		c.Outbox[0].TaskID = fmt.Sprintf("%s-create", c.Job.ID)
		if i%4 == 3 {
			c.Job.ID, c.Outbox[0].TaskID = taken.Job.ID, fmt.Sprintf("dup-%d", i)
			dup[i] = true
		}
		changes = append(changes, c)
	}
	check = func(errs []error) {
		t.Helper()
		require.Len(t, errs, n)
		ids := outboxIDs(t, s)
		for i, c := range changes {
			if dup[i] {
				require.ErrorIs(t, errs[i], store.ErrDuplicate, "create %d", i)
				_, found := ids[c.Outbox[0].TaskID]
				require.False(t, found, "create %d: a refused create's task is not in the outbox", i)
				continue
			}
			require.NoError(t, errs[i], "create %d", i)
			requireCreated(t, s, c)
			require.Equal(t, ids[c.Outbox[0].TaskID], c.Outbox[0].ID, "create %d: the id Apply set is its task's row", i)
		}
		job, _, err := s.LoadJob(ctx, taken.Job.ID)
		require.NoError(t, err)
		requireJob(t, taken.Job, job)
	}
	return changes, check
}

// testCreateManyJobsAtOnce creates many jobs concurrently, duplicates among them.
func testCreateManyJobsAtOnce(t *testing.T, s store.Store) {
	ctx := testContext(t)
	changes, check := ManyJobCreates(t, s, 40)
	check(applyAtOnce(ctx, s, changes))
}

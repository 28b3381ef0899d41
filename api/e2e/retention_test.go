package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// With CAO_RETENTION the maintenance leader deletes finished jobs with all their rows once they are
// older than it (the store's conformance suite covers what is kept: running jobs, jobs finished
// later, jobs whose webhook is still pending).
func TestRetentionDeletesFinishedJobs(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dagRegistry, "CAO_RETENTION=2s")
	api := c.startAPI()
	cl := c.client(api)
	done := cl.createJob("report", map[string]any{"topic": "old"})
	c.startWorker()
	cl.waitJob(done, 60*time.Second, "COMPLETED")
	evs, err := cl.sdk().Events(context.Background(), done, 0)
	require.NoError(t, err)
	require.NotEmpty(t, evs)

	require.True(t, pollUntil(30*time.Second, func() bool {
		code, _ := cl.do("GET", "/api/v1/jobs/"+done, nil)
		return code == http.StatusNotFound
	}), "the finished job is deleted after CAO_RETENTION")
	code, body := cl.do("GET", "/api/v1/jobs/"+done+"/events", nil)
	require.Equal(t, http.StatusNotFound, code, "%v", body)
	c.waitLog(api, "deleted jobs past retention", 5*time.Second)
}

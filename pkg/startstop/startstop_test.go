package startstop_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cao-run/cao/pkg/startstop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartStopTwice(t *testing.T) {
	t.Parallel()
	var l startstop.Loop
	var runs atomic.Int32
	started := make(chan struct{}, 2)
	fn := func(ctx context.Context) {
		runs.Add(1)
		started <- struct{}{}
		<-ctx.Done()
	}
	startCtx, cancel := context.WithCancel(context.Background())
	require.True(t, l.Start(startCtx, fn))
	require.False(t, l.Start(context.Background(), fn), "a second Start does nothing")
	<-started
	cancel() // the start request ending does not stop the loop
	require.True(t, l.Running())

	stopped, err := l.Stop(context.Background())
	require.NoError(t, err)
	require.True(t, stopped)
	require.False(t, l.Running())
	stopped, err = l.Stop(context.Background())
	require.NoError(t, err)
	require.False(t, stopped, "a second Stop does nothing")
	require.EqualValues(t, 1, runs.Load())

	require.True(t, l.Start(context.Background(), fn), "a stopped loop can start again")
	<-started
	_, err = l.Stop(context.Background())
	require.NoError(t, err)
}

func TestStopGivesUpWithItsContext(t *testing.T) {
	t.Parallel()
	var l startstop.Loop
	release := make(chan struct{})
	l.Start(context.Background(), func(context.Context) { <-release }) // ignores its context
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	stopped, err := l.Stop(ctx)
	require.True(t, stopped)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	close(release)
}

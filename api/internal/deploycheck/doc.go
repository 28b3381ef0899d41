// Package deploycheck holds static checks of CAO's deployment files: the Kubernetes manifests of
// deploy/k8s, compose.yaml, Dockerfile.api, Dockerfile.worker and .dockerignore. The tests read those
// files as text and verify them against the code itself: the variables the config loader reads, the
// routes the API and the worker serve, the registry loader, Asynq's Redis keys and the metric names.
// Nothing is deployed and no Docker engine or cluster is needed:
//
//	cd api && go test ./internal/deploycheck/... -count=1
//
// The package has no code of its own.
package deploycheck

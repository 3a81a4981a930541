//go:build tools

// Package tools pins the main packages this wrapper module builds: the Cluster API core
// manager (the module root up to v1.13) and clusterctl.
package tools

import (
	_ "sigs.k8s.io/cluster-api"
	_ "sigs.k8s.io/cluster-api/cmd/clusterctl"
)

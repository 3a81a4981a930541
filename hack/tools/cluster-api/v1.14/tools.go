//go:build tools

// Package tools pins the main packages this wrapper module builds: the Cluster API core
// manager (sigs.k8s.io/cluster-api/core since v1.14) and clusterctl.
package tools

import (
	_ "sigs.k8s.io/cluster-api/cmd/clusterctl"
	_ "sigs.k8s.io/cluster-api/core"
)

//go:build tools

// Package tools pins the main package this wrapper module builds.
package tools

import _ "github.com/siderolabs/cluster-api-control-plane-provider-talos"

//go:build tools

// Package tools pins the main package this wrapper module builds.
package tools

import _ "github.com/siderolabs/talos/cmd/talosctl"

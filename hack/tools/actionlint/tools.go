//go:build tools

// Wrapper module that builds github.com/rhysd/actionlint/cmd/actionlint (see hack/tools/tool.sh).
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"

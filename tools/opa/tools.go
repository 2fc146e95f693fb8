//go:build tools

// Pins the OPA CLI version for scripts/tools.sh; nothing imports this package.
package tools

import _ "github.com/open-policy-agent/opa"

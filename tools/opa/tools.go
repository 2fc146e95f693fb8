//go:build tools

// Pins the OPA CLI version that scripts/ensure-opa.sh builds; nothing imports this package.
package tools

import _ "github.com/open-policy-agent/opa"

//go:build tools

// Pins the NetworkPolicy enforcer of the test node (kube-router, firewall mode only), which
// scripts/ensure-netpol.sh builds; nothing imports this package.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"

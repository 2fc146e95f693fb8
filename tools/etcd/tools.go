//go:build tools

// Pins the etcd server that scripts/ensure-k8s-bins.sh builds for the test
// control plane; nothing imports this package. Its own module because etcd's
// server dependencies must not be resolved together with k8s.io/kubernetes'.
package tools

import _ "go.etcd.io/etcd/server/v3"

//go:build tools

// Pins the Kubernetes control-plane binaries that scripts/ensure-k8s-bins.sh
// builds for the test control plane; nothing imports this package.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)

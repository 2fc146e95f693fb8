//go:build tools

// Pins the Kubernetes binaries that scripts/ensure-k8s-bins.sh builds for the test cluster (the
// control plane and the kubelet of its one real node); nothing imports this package.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

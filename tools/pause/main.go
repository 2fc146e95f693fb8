// The sandbox ("pause") process of every pod on the test node: it holds the pod's namespaces,
// reaps the zombies of processes that share its PID namespace, and exits on SIGTERM/SIGINT.
// Built static by scripts/ensure-k8s-bins.sh and imported as the containerd sandbox image by
// scripts/k8s-node-up.sh, because the test machine has no registry to pull registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD may stand for several exits: reap until none is left.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

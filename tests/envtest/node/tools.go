//go:build tools

// Package tools pins the Kubernetes node commands built by ./build.
// It is never compiled; the build tag only keeps `go mod tidy` honest.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

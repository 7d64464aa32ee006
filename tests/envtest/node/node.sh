# Facts shared by tests/envtest/start (ENVTEST_NODE=1) and tests/envtest/node/*. Sourced, not run.
# shellcheck shell=bash
# shellcheck disable=SC2034 # used by the scripts that source this file

# All of these live only inside the node's network namespace, never on the host.
NODE_NAME=envtest-node
NODE_IP=10.200.0.2            # kubelet's node IP, on veth node0
NODE_CP_IP=10.200.0.1         # the API server as the node sees it, on veth peer cp0 (forwarded)
NODE_POD_CIDR=10.244.0.0/24   # pods, on bridge cni0
NODE_SERVICE_CIDR=10.0.0.0/24 # as --service-cluster-ip-range in ../start

PAUSE_IMAGE_NAME=registry.k8s.io/pause # tag: the pause version from the k8s.io/kubernetes module
BUSYBOX_IMAGE=localhost/busybox:static  # busybox-static from Debian

# Stop order; "netns" (the namespace holder) goes last.
NODE_COMPONENTS=(kube-scheduler kube-proxy kubelet containerd nsfwd netns)
NODE_PACKAGES=(containerd runc containernetworking-plugins busybox-static iptables)

# Test clusters. `make cluster-up` starts a real single-node cluster on this machine: our control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler from hack/k8s) plus containerd + runc, a
# CNI bridge fenced by nftables, kube-proxy, the kubelet and a TEST-ONLY fake GPU device plugin, with our
# own images imported. It needs root. See docs/test-control-plane.md and docs/real-node.md.

CLUSTER_ROOT ?= .local/cluster
# What a real node and the image builds need from Debian (installed by `make node-packages`).
NODE_DEB_PACKAGES := containerd runc containernetworking-plugins nftables iptables conntrack buildah debootstrap
# What the tests need from Debian besides: headless Chromium opens `tj report`'s page (tests/sdk).
TEST_DEB_PACKAGES := chromium

.PHONY: cluster-binaries
cluster-binaries: ## Build (or reuse) the pinned control-plane binaries; cached outside the repo, honours KUBEBUILDER_ASSETS.
	@hack/k8s/build.sh >/dev/null

.PHONY: node-binaries
node-binaries: cluster-binaries ## Build (or reuse) kubelet, kube-proxy, kubectl, crictl, the TEST-ONLY fake GPU device plugin and CoreDNS.
	@hack/k8s/build.sh node >/dev/null

.PHONY: node-packages
node-packages: ## apt-get install what a real node, the image builds and the tests need (skipped when already there).
	@missing=$$(for p in $(NODE_DEB_PACKAGES) $(TEST_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $$missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	fi

.PHONY: node-prereqs
node-prereqs: install cluster-binaries node-binaries node-packages

.PHONY: images
images: install node-packages ## Build the trainer, operator and pause images with buildah (cached by a hash of their inputs).
	@$(PY) -m transferjob_testing.images build

.PHONY: cluster-up
cluster-up: node-prereqs ## Start the real single-node cluster; kubeconfig in .local/cluster/kubeconfig.
	@$(PY) -m transferjob_testing.cluster up --root $(CLUSTER_ROOT)

.PHONY: cluster-down
cluster-down: ## Stop everything cluster-up started and restore the host (network, sysctls, iptables, cgroups).
	@if [ -x $(PY) ]; then $(PY) -m transferjob_testing.cluster down --root $(CLUSTER_ROOT); else echo "no venv: nothing to stop"; fi

.PHONY: cluster-status
cluster-status: ## Say whether the cluster-up control plane is running.
	@$(PY) -m transferjob_testing.cluster status --root $(CLUSTER_ROOT)

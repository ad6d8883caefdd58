# Test control plane: real etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback,
# plus a test-only node agent that runs pods as local processes. See docs/test-control-plane.md.

CLUSTER_ROOT ?= .local/cluster

.PHONY: cluster-binaries
cluster-binaries: ## Build (or reuse) the pinned control-plane binaries; cached outside the repo, honours KUBEBUILDER_ASSETS.
	@hack/k8s/build.sh >/dev/null

.PHONY: cluster-up
cluster-up: install cluster-binaries ## Start the loopback control plane and one node agent; kubeconfig in .local/cluster/kubeconfig.
	@$(PY) -m transferjob_testing.cluster up --root $(CLUSTER_ROOT)

.PHONY: cluster-down
cluster-down: ## Stop the control plane and node agent started by cluster-up.
	@if [ -x $(PY) ]; then $(PY) -m transferjob_testing.cluster down --root $(CLUSTER_ROOT); else echo "no venv: nothing to stop"; fi

.PHONY: cluster-status
cluster-status: ## Say whether the cluster-up control plane is running.
	@$(PY) -m transferjob_testing.cluster status --root $(CLUSTER_ROOT)

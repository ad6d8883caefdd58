"""Test support shared by the tests, `hack/demo.py` and the benchmarks under `bench/`; not in the images.

A source root of its own (`testing/`, beside `sdk/`, `operator/` and `trainer_image/`), installed with
the project's editable install, so that every entry point imports it by name instead of editing
`sys.path`, and test code stays out of the operator's package (as kopf keeps `kopf.testing` apart).
It reads files of the repository (`hack/k8s/go.mod`, `manifests/`), so it works from a checkout only;
the operator and trainer images copy `sdk/`, `operator/` and `trainer_image/` and never contain it.

* `cluster`: a real Kubernetes control plane (etcd, kube-apiserver, controller manager, scheduler) and
  a real node (containerd, runc, a CNI bridge, the kubelet, kube-proxy, a TEST-ONLY GPU device plugin)
  from pinned binaries; `python -m transferjob_testing.cluster up|down|status` (see
  docs/test-control-plane.md and docs/real-node.md).
* `images`: our images built with buildah from a local Debian base, cached by their inputs.
* `harness`: the operator installed and run as a subprocess with its ServiceAccount's credentials,
  and the digits data, source model and TransferJob specs the e2e tests, the demo and the benchmarks
  train with.
"""

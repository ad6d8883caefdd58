#!/usr/bin/env bash
# Build the test control-plane binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
# from the Go modules pinned in hack/k8s/go.mod, into a cache OUTSIDE the repository:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/transferjob/k8s-<version>/bin
# A binary that already exists there, or that KUBEBUILDER_ASSETS / TEST_ASSET_<NAME> provide, is not
# built again, so a second run is instant. Prints the cache bin directory on success.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$here/go.mod")
bin="${XDG_CACHE_HOME:-$HOME/.cache}/transferjob/k8s-${version}/bin"

provided() { # $1 = binary name: is it already available from the environment or the cache?
    local name=$1 var
    var="TEST_ASSET_$(echo "$name" | tr 'a-z-' 'A-Z_')"
    [[ -n "${!var:-}" && -x "${!var}" ]] && return 0
    [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/$name" ]] && return 0
    [[ -x "$bin/$name" ]]
}

missing=()
for name in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    provided "$name" || missing+=("$name")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "control-plane binaries ready (Kubernetes ${version}): ${KUBEBUILDER_ASSETS:+KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS and }$bin" >&2
    echo "$bin"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "error: Go is needed to build ${missing[*]} (Kubernetes ${version}); install Go >= 1.25," \
         "or point KUBEBUILDER_ASSETS / TEST_ASSET_* at ready binaries." >&2
    exit 1
fi

pkgs=()
for name in "${missing[@]}"; do pkgs+=("./cmd/$name"); done
echo "building ${missing[*]} (Kubernetes ${version}) into $bin; the first build takes a while..." >&2
mkdir -p "$bin"
tmp=$(mktemp -d "$bin/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
# One `go build` for all packages: shared dependencies compile once. -trimpath/-s -w keep binaries lean.
(cd "$here" && GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$tmp/" "${pkgs[@]}")
for name in "${missing[@]}"; do mv -f "$tmp/$name" "$bin/$name"; done
echo "built ${missing[*]} in $(( $(date +%s) - start ))s" >&2
echo "$bin"

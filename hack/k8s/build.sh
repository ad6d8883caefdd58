#!/usr/bin/env bash
# Build the test cluster's binaries from the Go modules pinned in hack/k8s/go.mod, into a cache OUTSIDE
# the repository:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/transferjob/k8s-<version>/bin
# A binary that already exists there, or that KUBEBUILDER_ASSETS / TEST_ASSET_<NAME> provide, is not
# built again, so a second run is instant. Prints the cache bin directory on success.
#   build.sh                 the control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
#   build.sh node            a real node: kubelet, kube-proxy, kubectl, crictl, the TEST-ONLY fake GPU
#                            device plugin, and the cluster DNS (a minimal CoreDNS from ../coredns)
#   build.sh all             both
set -euo pipefail

control_plane=(etcd kube-apiserver kube-controller-manager kube-scheduler)
node=(kubelet kube-proxy kubectl crictl test-only-fake-gpu-plugin coredns)
case "${1:-control-plane}" in
    control-plane) wanted=("${control_plane[@]}") ;;
    node) wanted=("${node[@]}") ;;
    all) wanted=("${control_plane[@]}" "${node[@]}") ;;
    *) echo "usage: $0 [control-plane|node|all]" >&2; exit 2 ;;
esac

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
for name in "${wanted[@]}"; do
    provided "$name" || missing+=("$name")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "${wanted[*]} ready (Kubernetes ${version}): ${KUBEBUILDER_ASSETS:+KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS and }$bin" >&2
    echo "$bin"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "error: Go is needed to build ${missing[*]} (Kubernetes ${version}); install Go >= 1.25," \
         "or point KUBEBUILDER_ASSETS / TEST_ASSET_* at ready binaries." >&2
    exit 1
fi

# crictl is not part of Kubernetes' module; it installs from cri-tools (the newest tag the proxy serves).
CRICTL_VERSION=v1.34.0
pkgs=()
for name in "${missing[@]}"; do [[ $name == crictl || $name == coredns ]] || pkgs+=("./cmd/$name"); done
echo "building ${missing[*]} (Kubernetes ${version}) into $bin; the first build takes a while..." >&2
mkdir -p "$bin"
tmp=$(mktemp -d "$bin/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
# One `go build` for all packages: shared dependencies compile once. -trimpath/-s -w keep binaries lean;
# -dwarf=false spares the compiler the debug information that -w would throw away at link time.
# The version variables are what the Kubernetes release build stamps; without them a binary reports
# v0.0.0-master+$Format:%H$, which `kubectl version` and version-skew checks cannot parse.
minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
if [[ ${#pkgs[@]} -gt 0 ]]; then
    (cd "$here" && GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -trimpath -gcflags=all=-dwarf=false \
        -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
fi
if [[ " ${missing[*]} " == *" crictl "* ]]; then
    GOBIN="$tmp" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi
# CoreDNS is its own module (../coredns: CoreDNS's module with only the plugins the cluster DNS uses), so
# its dependencies never touch the Kubernetes build's go.sum.
if [[ " ${missing[*]} " == *" coredns "* ]]; then
    (cd "$here/../coredns" && GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -trimpath -gcflags=all=-dwarf=false \
        -ldflags "-s -w" -o "$tmp/coredns" .)
fi
for name in "${missing[@]}"; do mv -f "$tmp/$name" "$bin/$name"; done
echo "built ${missing[*]} in $(( $(date +%s) - start ))s" >&2
echo "$bin"

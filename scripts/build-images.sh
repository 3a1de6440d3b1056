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
  local tar=$IMAGES_DIR/base-rootfs.tar
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
}

# Prints the base image to build on: the real one when it can be pulled, the stand-in otherwise.
resolve_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; return; fi
  if image_exists "$UPSTREAM_BASE"; then echo "$UPSTREAM_BASE"; return; fi
  if [ ! -e "$IMAGES_DIR/.pull-failed" ]; then
    if timeout "$PULL_TIMEOUT" "${BUILDAH[@]}" pull --quiet "$UPSTREAM_BASE" >/dev/null 2>&1; then
      echo "$UPSTREAM_BASE"; return
    fi
    log "cannot pull $UPSTREAM_BASE; using the mmdebstrap stand-in (delete $IMAGES_DIR/.pull-failed to retry)"
    touch "$IMAGES_DIR/.pull-failed"
  fi
  build_standin_base
  echo "$STANDIN_BASE"
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

# Resolves the image's wheels on the host (cached: pip skips what is already in the folder).
fetch_wheels() {
  mkdir -p "$WHEELS"
  local reqs=$IMAGES_DIR/requirements-$1.txt
  requirements "${@:2}" >"$reqs"
  log "resolving wheels for $1 into $WHEELS"
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS" --find-links "$WHEELS" -r "$reqs"
}

# build_image NAME EXTRA... : builds localhost/legacygpu-NAME:TAG from Dockerfile.NAME.
build_image() {
  local name=$1 roots
  local ref=localhost/legacygpu-$name:$TAG dockerfile=Dockerfile.$name
  case $name in
    worker) roots="core worker" ;;
    operator) roots="core api operator" ;;
  esac
  fetch_wheels "$name" "${@:2}"
  local base base_id key
  base=$(resolve_base)
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
  log "built $ref in $((SECONDS - start)) s"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(worker operator)
for target in "${targets[@]}"; do
  case $target in
    base) resolve_base >/dev/null ;;
    worker) build_image worker worker ;;
    operator) build_image operator api operator ;;
    *) echo "unknown image: $target (worker, operator, base)" >&2; exit 2 ;;
  esac
done

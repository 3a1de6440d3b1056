"""Node labels that say which legacy GPUs a node holds, and the patch that applies them.

Design: the labels are computed from a health round's :class:`~.health.CardStatus`
map (cards present in sysfs, healthy or not: labels describe the hardware;
health is the device plugin's business). Keys, all under ``legacygpu.io/``:

=============================  =================================================
``gpu.present``                ``"true"`` or ``"false"``
``gpu.count``                  number of cards, e.g. ``"2"``
``gpu.family``                 e.g. ``polaris``; ``mixed`` when cards differ
``gpu.model``                  e.g. ``rx580``; ``mixed`` when cards differ
``gpu.vram-mib``               the smallest card's VRAM in MiB, e.g. ``"8192"``
``gpu.compute-units``          the smallest compute-unit count (OpenCL's
                               ``max_compute_units`` when joined, else the
                               PCI-id table of :mod:`.pciids`)
``gpu.opencl-version``         the lowest OpenCL version the drivers report
=============================  =================================================

Minimums, not sums: a pod is placed by what any one of its cards can do. A
label whose value is unknown is removed rather than guessed. The patch is a
JSON merge patch (RFC 7386) over exactly these keys (``None`` deletes a key),
so labels the agent does not own are never touched. :class:`NodeLabeller`
takes any client with ``patch_node(name, body, _content_type=...)`` (the
kubernetes client's ``CoreV1Api`` has it) and patches only when the labels
change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from legacygpu.worker.nodeagent.errors import LabelError
from legacygpu.worker.nodeagent.health import CardStatus

__all__ = [
    "LABEL_KEYS",
    "MERGE_PATCH",
    "NodeLabeller",
    "NodePatcher",
    "compute_labels",
    "kubernetes_client",
    "label_patch",
]

logger = logging.getLogger(__name__)

PREFIX = "legacygpu.io/gpu"
LABEL_KEYS = tuple(f"{PREFIX}.{name}" for name in (
    "present", "count", "family", "model", "vram-mib", "compute-units", "opencl-version",
))
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _same(values: list[str]) -> str:
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else "mixed"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def compute_labels(statuses: Mapping[str, CardStatus]) -> dict[str, str]:
    """The labels for a node whose cards are ``statuses`` (absent keys: unknown, to be removed)."""
    cards = [s for s in statuses.values() if s.present]
    labels = {f"{PREFIX}.present": "true" if cards else "false", f"{PREFIX}.count": str(len(cards))}
    if not cards:
        return labels
    labels[f"{PREFIX}.family"] = _same([s.card.model.family for s in cards])
    labels[f"{PREFIX}.model"] = _same([s.card.model.model for s in cards])
    vram = [s.card.vram_mib for s in cards if s.card.vram_mib is not None]
    if vram:
        labels[f"{PREFIX}.vram-mib"] = str(min(vram))
    units = [s.opencl.compute_units if s.opencl is not None else s.card.model.compute_units for s in cards]
    known_units = [u for u in units if u]
    if known_units:
        labels[f"{PREFIX}.compute-units"] = str(min(known_units))
    versions = [s.opencl.opencl_version for s in cards if s.opencl is not None and s.opencl.opencl_version]
    if versions:
        labels[f"{PREFIX}.opencl-version"] = min(versions, key=_version_key)
    return {k: v for k, v in labels.items() if len(v) <= 63 and _VALUE.match(v)}


def label_patch(labels: Mapping[str, str]) -> dict[str, Any]:
    """A merge patch setting ``labels`` and deleting every other key the agent owns."""
    return {"metadata": {"labels": {key: labels.get(key) for key in LABEL_KEYS}}}


MERGE_PATCH = "application/merge-patch+json"


class NodePatcher(Protocol):
    """The one call the labeller needs (``kubernetes.client.CoreV1Api`` fits).

    The labeller passes ``_content_type`` explicitly: recent kubernetes clients
    otherwise pick ``application/json-patch+json`` for a dict body, which the
    API server rejects.
    """

    def patch_node(self, name: str, body: Any, *, _content_type: str) -> Any: ...


class NodeLabeller:
    """Applies labels to one Node, only when they differ from what it applied last."""

    def __init__(self, node_name: str, client: NodePatcher) -> None:
        self.node_name = node_name
        self.client = client
        self.applied: dict[str, str] | None = None

    def apply(self, labels: Mapping[str, str]) -> bool:
        """Patch the Node if ``labels`` changed; returns whether it patched. Raises :class:`LabelError`."""
        wanted = dict(labels)
        if wanted == self.applied:
            return False
        try:
            self.client.patch_node(self.node_name, label_patch(wanted), _content_type=MERGE_PATCH)
        except Exception as exc:  # the client raises ApiException, urllib3 errors, ...
            raise LabelError(f"cannot label node {self.node_name!r}: {exc}") from exc
        self.applied = wanted
        logger.info("labelled node %s: %s", self.node_name, wanted)
        return True


def kubernetes_client() -> NodePatcher:
    """A ``CoreV1Api`` from the in-cluster service account, else from the local kubeconfig."""
    try:
        from kubernetes import client, config

        from legacygpu.core.kube.client import load_configuration
    except ImportError as exc:
        raise LabelError("labelling a Node needs the 'kubernetes' package") from exc
    try:
        configuration = load_configuration()
    except (config.ConfigException, OSError) as exc:
        raise LabelError(f"no in-cluster service account and no usable kubeconfig: {exc}") from exc
    return client.CoreV1Api(client.ApiClient(configuration))

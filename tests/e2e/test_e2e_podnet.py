"""The stand-in's pod network (e2ecluster.podnet), without a cluster: the bind shim and Service names.

The shim is compiled with the host's C compiler and preloaded into a real Python process, which
binds the ways the chart's servers do (uvicorn on 0.0.0.0, gRPC on [::], a given address).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2ecluster import podnet

BINDS = r"""
import json, socket
out = {}
for name, family, host in (("any4", socket.AF_INET, "0.0.0.0"), ("any6", socket.AF_INET6, "::"),
                           ("given", socket.AF_INET, "127.0.0.1")):
    s = socket.socket(family)
    s.bind((host, 0))
    out[name] = s.getsockname()[0]
    s.close()
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_the_shim_binds_wildcard_addresses_to_the_pod_ip_and_leaves_given_ones(tmp_path: Path) -> None:
    env, (target, folder) = podnet.preload("127.1.0.42", tmp_path)
    assert target == podnet.CONTAINER_DIR and env["LD_PRELOAD"] == f"{target}/{podnet.LIBRARY}"
    library = Path(folder) / podnet.LIBRARY
    assert library.is_file()
    assert podnet.shim(tmp_path) == Path(folder), "compiled once per source"

    def binds(extra: dict[str, str]) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-c", BINDS], env={"PATH": "/usr/bin:/bin", **extra},
                             capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
        return dict(json.loads(out.stdout))

    shimmed = binds({"LD_PRELOAD": str(library), "E2E_POD_IP": env["E2E_POD_IP"]})
    assert shimmed == {"any4": "127.1.0.42", "any6": "::ffff:127.1.0.42", "given": "127.0.0.1"}
    assert binds({"LD_PRELOAD": str(library)}) == {"any4": "0.0.0.0", "any6": "::", "given": "127.0.0.1"}


def _pod(ns: str, labels: dict[str, str], ip: str, ready: bool) -> dict[str, object]:
    return {"metadata": {"namespace": ns, "labels": labels},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]}}  # fmt: skip


def _service(ns: str, name: str, selector: dict[str, str] | None) -> dict[str, object]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"selector": selector} if selector else {}}


def test_service_names_resolve_to_a_ready_selected_pod_and_bare_names_only_in_the_pods_namespace() -> None:
    api = {"app": "api", "release": "rel"}
    pods = [
        _pod("sys", api, "127.1.0.9", False),
        _pod("sys", {**api, "extra": "x"}, "127.1.0.7", True),
        _pod("ml", api, "127.1.0.5", True),  # another namespace: not the Service's
        _pod("ml", {"app": "worker"}, "127.1.0.3", False),
    ]
    services = [
        _service("sys", "rel-api", api),
        _service("ml", "digits-workers", {"app": "worker"}),  # nothing ready: no name
        _service("sys", "external", None),  # no selector: no name
    ]
    assert podnet.service_hosts(services, pods, "sys") == {
        "rel-api": "127.1.0.7", "rel-api.sys": "127.1.0.7", "rel-api.sys.svc": "127.1.0.7",
        "rel-api.sys.svc.cluster.local": "127.1.0.7",
    }  # fmt: skip
    from_ml = podnet.service_hosts(services, pods, "ml")
    assert "rel-api" not in from_ml and from_ml["rel-api.sys.svc"] == "127.1.0.7"

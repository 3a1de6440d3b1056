"""The lifecycle parity scenarios (tests/parity) on the real kube-apiserver.

The fast tier runs them on the local backend and on the API emulator; here the
same :class:`KubeDriver` talks to the real API server, so the CRD's schema
(``status.history``, ``latency.computeSeconds``), its CEL rules and real
optimistic concurrency check every status the lifecycle writes.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2ecluster import Kube

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parity"))
import test_lifecycle_parity as scenarios
from drivers import KubeDriver

from legacygpu.operator.crdgen import all_crds

pytestmark = pytest.mark.slow

Scenario = Callable[[Any], Coroutine[Any, Any, None]]
SCENARIOS: list[Scenario] = [getattr(scenarios, n) for n in sorted(dir(scenarios)) if n.startswith("test_")]


@pytest.fixture(scope="module")
def crds(kube: Kube) -> Kube:
    kube.apply(all_crds())
    return kube


@pytest.fixture
def http(crds: Kube) -> Iterator[httpx.Client]:
    config = crds.api.configuration
    context = ssl.create_default_context(cafile=config.ssl_ca_cert)
    if config.cert_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    headers = {"Authorization": config.api_key["authorization"]} if config.api_key.get("authorization") else {}
    with httpx.Client(base_url=config.host, verify=context, headers=headers, timeout=15.0) as client:
        yield client


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__.removeprefix("test_"))
async def test_lifecycle_on_the_real_api_server(scenario: Scenario, http: httpx.Client, namespace: str) -> None:
    await scenario(KubeDriver(http, namespace))

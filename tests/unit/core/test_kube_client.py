"""The shared Kubernetes client: an API server that is gone or silent is an ApiException, not a crash.

A real socket on loopback plays the silent server (it accepts and never
answers); a port nobody listens on plays the gone one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import kubernetes
import pytest

from legacygpu.core.errors import UnavailableError
from legacygpu.core.kube.client import KubeApi, load_configuration, request_json
from legacygpu.core.kube.errors import ApiError


@pytest.fixture
def silent_server() -> Iterator[str]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _client(url: str) -> kubernetes.client.ApiClient:
    config = load_configuration(server=url)
    config.retries = 0
    return kubernetes.client.ApiClient(config)


def test_a_silent_server_times_out_as_an_api_exception(silent_server: str) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        request_json(_client(silent_server), "GET", "/api/v1/namespaces/default/pods", timeout=0.3)
    assert caught.value.status == 0
    assert "no answer from the API server" in str(caught.value.reason)


def test_a_gone_server_is_an_api_error_with_status_0(closed_port: str) -> None:
    config = load_configuration(server=closed_port)
    config.retries = 0
    api = KubeApi(config)
    try:
        with pytest.raises(ApiError) as caught:
            asyncio.run(api.request("GET", "/api/v1/namespaces/default/pods"))
    finally:
        api.close()
    assert caught.value.status == 0
    assert isinstance(caught.value, UnavailableError)
    assert "GET /api/v1/namespaces/default/pods" in str(caught.value)


def test_kubeconfig_is_read_from_the_environment_at_each_call(tmp_path, monkeypatch) -> None:
    def kubeconfig(server: str) -> str:
        path = tmp_path / f"{server.rsplit(':', 1)[1]}.yaml"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n"
            "users: [{name: u, user: {token: t0ken}}]\n"
            "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        )
        return str(path)

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", kubeconfig("http://127.0.0.1:6443"))
    assert load_configuration().host == "http://127.0.0.1:6443"
    monkeypatch.setenv("KUBECONFIG", kubeconfig("http://127.0.0.1:7443"))  # set after the import: still seen
    assert load_configuration().host == "http://127.0.0.1:7443"

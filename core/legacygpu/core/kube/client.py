"""The operator's Kubernetes calls, async, with errors translated.

kopf watches and patches the object a handler runs for; everything else
(children, other tasks, leases) goes through :class:`KubeApi`, which runs
the official client's blocking calls on a small thread pool so a reconcile
pass can issue several at once without blocking the event loop. The same
client configuration feeds kopf's login (:func:`connection_info`), so both
talk to the same API server with the same identity.

Every phase-changing status write passes ``resource_version``: the API
server then refuses it with 409 (:class:`ApiConflictError`) when the task
changed since it was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes
import urllib3

from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION
from legacygpu.core.kube.errors import ApiConflictError, ApiNotFoundError, from_api_exception

__all__ = [
    "MERGE_PATCH",
    "KubeApi",
    "json_lines",
    "load_configuration",
    "open_watch",
    "request_json",
    "resource_path",
]
MERGE_PATCH = "application/merge-patch+json"
"""Always named: the generated client otherwise sends core patches as JSON patches."""


def load_configuration(
    *, server: str | None = None, kubeconfig: str | None = None, context: str | None = None,
    token: str | None = None, insecure: bool = False,
) -> kubernetes.client.Configuration:
    """A client configuration, found as kubectl finds one.

    An explicit ``server``; else ``kubeconfig`` or ``$KUBECONFIG`` when set (read
    here, at each call: the kubernetes package reads it once, when first
    imported); else the in-cluster service account; else ``~/.kube/config``.
    """
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    if server:
        config = kubernetes.client.Configuration(host=server.rstrip("/"))
        config.verify_ssl = not insecure
        if token:
            config.api_key = {"authorization": f"Bearer {token}"}
        return config
    config = kubernetes.client.Configuration()
    if kubeconfig is None and context is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
            return config
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=config)
    return config


def resource_path(group: str, version: str, plural: str, namespace: str | None, name: str | None = None,
          subresource: str | None = None) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


def _send(
    client: kubernetes.client.ApiClient, method: str, path: str, *, body: Any = None,
    query: dict[str, str] | None = None, content_type: str | None = None, timeout: Any = None,
) -> Any:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    _, url, headers, payload, _ = client.param_serialize(
        method=method, resource_path=path, query_params=list((query or {}).items()),
        header_params=headers, body=body, auth_settings=["BearerToken"],
    )
    # The generated client's REST layer never preloads: .response is the raw urllib3 response.
    return client.rest_client.request(method, url, headers=headers, body=payload, _request_timeout=timeout)


def request_json(
    client: kubernetes.client.ApiClient, method: str, path: str, *, body: Any = None,
    query: dict[str, str] | None = None, content_type: str | None = None, timeout: Any = None,
) -> dict[str, Any]:
    """One blocking call on ``client``: the decoded answer, or ``ApiException`` for a non-2xx status.

    A server that cannot be reached or does not answer in time also raises
    ``ApiException`` (status 0), so callers handle one exception type and a
    slow API server is a failed call to retry, never a crashed worker loop.
    """
    try:
        response = _send(client, method, path, body=body, query=query, content_type=content_type, timeout=timeout)
        response.read()
    except urllib3.exceptions.HTTPError as exc:
        raise kubernetes.client.ApiException(status=0, reason=f"no answer from the API server ({exc})") from exc
    text = response.data.decode("utf-8") if response.data else ""
    if not 200 <= response.status <= 299:
        raise kubernetes.client.ApiException.from_response(http_resp=response, body=text, data=None)
    return json.loads(text) if text else {}


def open_watch(
    client: kubernetes.client.ApiClient, path: str, *, query: dict[str, str] | None = None,
    timeout: float = 60.0, connect_timeout: float = 10.0,
) -> Any:
    """The open urllib3 stream of a watch on ``path`` (the server ends it after ``timeout`` s).

    Raises ``ApiException`` unless the server answered 200; the caller
    releases the stream (``release_conn``), or ``shutdown()``s it to end a
    blocked read from another thread.
    """
    params = {**(query or {}), "watch": "true", "timeoutSeconds": str(int(timeout))}
    raw = _send(client, "GET", path, query=params, timeout=(connect_timeout, timeout + connect_timeout)).response
    if raw.status != 200:
        raw.read()
        raw.release_conn()
        raise kubernetes.client.ApiException(status=raw.status, reason=f"watch {path}")
    return raw


def json_lines(raw: Any, chunk_size: int = 65536) -> Iterator[dict[str, Any]]:
    """The JSON objects of a newline-delimited stream, as they arrive."""
    buffer = b""
    for chunk in raw.stream(chunk_size, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


class KubeApi:
    """Async, dict-in dict-out access to any resource, plus the calls the operator makes."""

    def __init__(self, configuration: kubernetes.client.Configuration, *, concurrency: int = 8) -> None:
        self.configuration = configuration
        self.client = kubernetes.client.ApiClient(configuration)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kubeapi")
        self._streams: set[Any] = set()
        self._closed = False

    def close(self) -> None:
        """Release the pool and end every open watch at once (their threads see the stream end).

        A watch still opening ends as soon as it is open (:meth:`watch_sync` looks at the flag
        after it registered its stream, so either this loop or that look sees it).
        """
        self._closed = True
        for stream in list(self._streams):
            with contextlib.suppress(Exception):
                stream.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def request_sync(
        self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
        content_type: str | None = None, timeout: float | tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """One blocking API call with the client's authentication; raises ``ApiException``.

        ``timeout``: seconds, or (connect, read) seconds; None waits as long as the connection lasts.
        """
        return request_json(
            self.client, method, path, body=body, query=query, content_type=content_type, timeout=timeout
        )

    def watch_sync(
        self, path: str, *, query: dict[str, str] | None = None, timeout: float = 60.0
    ) -> Iterator[dict[str, Any]]:
        """Blocking: the events of one watch on ``path`` (ends after ``timeout`` seconds, or on error)."""
        raw = open_watch(self.client, path, query=query, timeout=timeout)
        self._streams.add(raw)
        try:
            if self._closed:  # closed while the watch was opening: close() may have missed the stream
                with contextlib.suppress(Exception):
                    raw.shutdown()
                return
            yield from json_lines(raw)
        finally:
            self._streams.discard(raw)
            raw.release_conn()

    async def request(
        self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`request_sync` on the pool; ``ApiException`` becomes the operator's errors."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.request_sync, method, path, body=body, query=query, content_type=content_type)
        try:
            return await loop.run_in_executor(self._pool, call)
        except kubernetes.client.ApiException as exc:
            raise from_api_exception(exc, f"{method} {path}") from exc

    async def get(self, group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", resource_path(group, version, plural, namespace, name))

    async def create(self, group: str, version: str, plural: str, namespace: str, body: Any) -> dict[str, Any]:
        return await self.request("POST", resource_path(group, version, plural, namespace), body=body)

    async def patch(
        self, group: str, version: str, plural: str, namespace: str, name: str, body: Any,
        *, subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", resource_path(group, version, plural, namespace, name, subresource),
            body=body, content_type=MERGE_PATCH,
        )

    async def delete(self, group: str, version: str, plural: str, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiNotFoundError):
            await self.request("DELETE", resource_path(group, version, plural, namespace, name))

    async def list(
        self, group: str, version: str, plural: str, namespace: str, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        answer = await self.request("GET", resource_path(group, version, plural, namespace), query=query)
        return list(answer.get("items") or [])

    # -- tasks -----------------------------------------------------------------------------------

    async def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        return await self.get(GROUP, VERSION, TASK_PLURAL, namespace, name)

    async def patch_task_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.patch(GROUP, VERSION, TASK_PLURAL, namespace, name, body, subresource="status")

    async def patch_task_labels(self, namespace: str, name: str, labels: dict[str, str | None]) -> dict[str, Any]:
        return await self.patch(GROUP, VERSION, TASK_PLURAL, namespace, name, {"metadata": {"labels": labels}})

    async def delete_task(self, namespace: str, name: str) -> None:
        await self.delete(GROUP, VERSION, TASK_PLURAL, namespace, name)

    # -- clusters --------------------------------------------------------------------------------

    async def get_cluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.get(GROUP, VERSION, CLUSTER_PLURAL, namespace, name)
        except ApiNotFoundError:
            return None

    async def patch_cluster_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.patch(GROUP, VERSION, CLUSTER_PLURAL, namespace, name, {"status": status}, subresource="status")

    # -- children --------------------------------------------------------------------------------

    async def create_pod(self, body: dict[str, Any]) -> None:
        await self.create("", "v1", "pods", body["metadata"]["namespace"], body)

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self.delete("", "v1", "pods", namespace, name)

    async def ensure_service(self, body: dict[str, Any]) -> bool:
        """Create the Service unless it exists; True when created."""
        meta = body["metadata"]
        try:
            await self.get("", "v1", "services", meta["namespace"], meta["name"])
            return False
        except ApiNotFoundError:
            pass
        try:
            await self.create("", "v1", "services", meta["namespace"], body)
        except ApiConflictError:
            return False
        return True

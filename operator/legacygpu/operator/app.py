"""Running the operator: registry, kopf settings, login, leader election, metrics.

:func:`run_operator` is what ``legacygpu operator run`` calls and what the
tests start in-process: it builds a fresh kopf registry (no module-level
handlers, so several operators can live in one process one after another),
waits for the Lease when leader election is on, serves ``/metrics``, and
runs kopf (clusters and pods) and the operator's own task watch
(:mod:`legacygpu.operator.taskwatch`) until ``stop`` is set or the Lease is lost. It is ready
(``ready``) once kopf is and every served scope's tasks were listed. On a stop or a lost Lease the
runtime closes at once (``rt.closing``: no task event is handled, no orphan check started, no
task, pod or cluster is written: the cluster loops end after their pass, a pass in flight skips
its remaining writes, the finalizer leaves the cluster to the next leader), the task watch
delivers nothing more, and kopf is told to stop: kopf can take seconds to wind down, and a
replica that lost its Lease must not act on tasks meanwhile. (A request already sent when
the Lease is lost still lands.) Losing the Lease
raises :class:`~legacygpu.operator.errors.LeadershipLostError` (after the same cleanup as a stop), so
``legacygpu operator run`` exits non-zero and Kubernetes restarts the
container, which then waits as a standby; a stop returns normally (exit 0).

kopf and the operator's own client share one
``kubernetes.client.Configuration``: :func:`connection_info` turns it into
kopf's credentials, so both talk to the same server as the same identity.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import kubernetes

from legacygpu.core.kube.client import KubeApi
from legacygpu.operator import cluster_handlers, events, task_handlers
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.errors import LeadershipLostError
from legacygpu.operator.leader import LeaseElector
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.taskwatch import TaskWatch

__all__ = [
    "FINALIZER", "build_registry", "build_settings", "connection_info", "quiet_event_handler_logs", "run_operator",
]

log = logging.getLogger(__name__)

FINALIZER = "legacygpu.io/operator"


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf credentials equivalent to a client configuration (refreshing in-cluster tokens first)."""
    hook = getattr(configuration, "refresh_api_key_hook", None)
    if hook is not None:
        hook(configuration)
    header = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get("BearerToken")
    prefix = (configuration.api_key_prefix or {}).get("authorization")
    scheme = token = None
    if header:
        if " " in header:
            scheme, token = header.split(" ", 1)
        else:
            scheme, token = prefix or "Bearer", header
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


_EVENT_HANDLERS = ("pod_event", "cluster_event")


class _EventHandlerSuccesses(logging.Filter):
    """Drops kopf's ``Handler 'pod_event' succeeded.`` (and the cluster event handler's alike).

    kopf logs every handler's success at INFO on ``kopf.objects``; the operator's
    default level is INFO, so each watch event logged a line (dozens a second
    while workers report their load, each formatted and written, saying
    nothing: these handlers only poke a cluster's loop). Their failures, and
    every other kopf message, still pass.
    """

    DROPPED = frozenset(f"Handler {handler!r} succeeded." for handler in _EVENT_HANDLERS)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.DROPPED


def quiet_event_handler_logs() -> None:
    """Install :class:`_EventHandlerSuccesses` on ``kopf.objects`` (once per process)."""
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _EventHandlerSuccesses) for f in objects.filters):
        objects.addFilter(_EventHandlerSuccesses())


def build_registry(configuration: kubernetes.client.Configuration) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(configuration)

    kopf.on.login(id="login", registry=registry)(login)
    cluster_handlers.register(registry)  # tasks are not kopf's: see legacygpu.operator.taskwatch
    return registry


def build_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="legacygpu.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="legacygpu.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # explicit events only, not every log line
    settings.posting.reporting_component = events.COMPONENT
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    return settings


async def _watch_flags(
    stop: asyncio.Event, lost: asyncio.Event, kopf_stop: asyncio.Event, rt: OperatorRuntime, watch: TaskWatch
) -> None:
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
    # At once, before anything awaits: task events already queued on the loop are dropped, and
    # the cluster loops, the finalizer and write_task stop writing while kopf winds down.
    rt.closing = True
    watch.halt()
    kopf_stop.set()
    await asyncio.to_thread(watch.stop)  # closes its connections and waits (briefly) for its threads
    await rt.shutdown()  # kopf waits for tasks spawned while it ran: end ours first


async def _ready_when(kopf_ready: asyncio.Event, rt: OperatorRuntime, ready: asyncio.Event) -> None:
    """Ready once kopf is and the task index is whole (a replica serving before would see no tasks)."""
    await kopf_ready.wait()
    await rt.tasks.synced.wait()
    ready.set()


async def run_operator(
    config: OperatorConfig,
    configuration: kubernetes.client.Configuration,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    runtime_ready: asyncio.Future[OperatorRuntime] | None = None,
) -> None:
    """Run until ``stop`` is set; with leader election, raise :class:`LeadershipLostError` if the Lease is lost."""
    stop = stop or asyncio.Event()
    quiet_event_handler_logs()
    api = KubeApi(configuration, concurrency=config.api_concurrency)
    rt = OperatorRuntime(config=config, api=api)
    if runtime_ready is not None and not runtime_ready.done():
        runtime_ready.set_result(rt)
    if config.metrics_port is not None:
        port = rt.metrics.serve(config.metrics_port, config.metrics_host)
        log.info("serving /metrics on %s:%d", config.metrics_host, port)
    elector: LeaseElector | None = None
    watch = task_handlers.make_task_watch(rt)
    keeper: asyncio.Task[None] | None = None
    lost = asyncio.Event()
    kopf_stop = asyncio.Event()
    kopf_ready = asyncio.Event()
    flags = asyncio.ensure_future(_watch_flags(stop, lost, kopf_stop, rt, watch))
    readiness = asyncio.ensure_future(_ready_when(kopf_ready, rt, ready)) if ready is not None else None
    try:
        if config.leader_election:
            # The Lease gets a connection pool of its own: renewals queued behind a burst of task writes
            # on the shared pool missed their deadline under load and a busy leader lost its Lease.
            lease_api = KubeApi(configuration, concurrency=1)
            elector = LeaseElector(
                lease_api, namespace=config.lease_namespace, name=config.lease_name, identity=config.identity,
                lease_seconds=config.lease_seconds, renew_seconds=config.renew_seconds,
            )
            if not await elector.acquire(stop):
                return
            keeper = asyncio.ensure_future(elector.keep(lost))
            log.info("leading as %s", config.identity)
        rt.metrics.leader.set(1)
        watch.start()
        await kopf.operator(
            registry=build_registry(configuration),
            settings=build_settings(),
            memo=kopf.Memo(runtime=rt),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            stop_flag=kopf_stop,
            ready_flag=kopf_ready,
        )
    finally:
        rt.metrics.leader.set(0)
        rt.closing = True
        await asyncio.to_thread(watch.stop)
        flags.cancel()
        if readiness is not None:
            readiness.cancel()
        if keeper is not None:
            keeper.cancel()
        await rt.shutdown()
        if elector is not None and not lost.is_set():
            await elector.release()
        if elector is not None:
            elector.api.close()
        api.close()
        rt.metrics.close()
    if lost.is_set() and not stop.is_set():
        raise LeadershipLostError(
            f"lost the lease {config.lease_namespace}/{config.lease_name} as {config.identity}; exiting to restart "
            "as a standby"
        )

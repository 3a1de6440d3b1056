"""The node simulator: a kubelet stand-in for pods bound to the simulated GPU nodes.

Design: one process (``python -m e2ecluster simulate``) that

1. registers the Node objects and renews their Leases every 10 s and their Ready
   condition every 30 s (:mod:`e2ecluster.nodes`), and reports ready (the file
   ``<root>/simulator.ready``) once the node lifecycle controller has lifted the
   ``node.kubernetes.io/not-ready`` taint the API server puts on new nodes;
2. watches all pods (a raw watch, resumed from the last resourceVersion, relisted on
   410) and, for each pod bound to one of its nodes, gives it a distinct loopback pod
   IP (``127.1.x.y``; ``$E2E_POD_NETWORK``, e.g. ``127.7``, picks another /16, so that two
   clusters on one machine never share an address) and its GPU indices, and writes a kubelet-like status
   (:mod:`e2ecluster.podstatus`);
3. for worker pods (label ``app.kubernetes.io/component=worker`` by default) starts a
   real local process per pod, from the template in ``<root>/worker-command`` (read at
   each start, so tests can change it), with the pod's environment and service-account
   credentials (:mod:`e2ecluster.podenv`), logging to ``<root>/pods/<ns>_<name>/``;
   restarts it per ``restartPolicy`` with a capped back-off; kills it when the pod goes.
   With the template ``{image}`` (:mod:`e2ecluster.podimage`), every pod whose container
   image is in the ``make images`` storage runs from that image instead (buildah, chroot
   isolation: the pod's command, args, env, user, working dir and volumes), workers or not,
   and a pod whose image is not there waits in ``ErrImageNeverPull``;
4. gives each node a simulated host file system (``<root>/nodes/<node>/``: a fixture amdgpu
   ``sys/``, fake ``dev/dri/`` nodes, the kubelet's device-plugin folder; :mod:`e2ecluster.nodefs`)
   from which pods' ``hostPath`` volumes are bound, and plays the kubelet's device manager there
   (:mod:`e2ecluster.devicemanager`): a device plugin that registers on the node's ``kubelet.sock``
   (the node agent's DaemonSet) sets the node's GPU capacity, and GPU indices are handed out below
   what it advertises; nodes without a plugin keep the pool's fixed count;
5. finalises deletions: a pod with ``deletionTimestamp`` has its process stopped and is
   then deleted with grace period 0 (the kubelet's job; without it pods would hang in
   Terminating forever).

Everything runs on one thread except the watch and the heartbeats, which feed or run
beside the main loop; all API writes use explicit patch content types.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2ecluster import nodefs, nodes, podimage, podmounts, procs, provisioner
from e2ecluster.cluster import NodePool
from e2ecluster.devicemanager import DeviceManager
from e2ecluster.images import Buildah, ImageError
from e2ecluster.podenv import PodContext, build_env, pod_env, render_argv, write_credentials
from e2ecluster.podstatus import PodRecord, desired_status, now_rfc3339, probe_alive, probe_ready

__all__ = ["Simulator"]

log = logging.getLogger(__name__)

SMP = "application/strategic-merge-patch+json"
WATCH_SECONDS = 60
MAX_BACKOFF = 10.0


class Simulator:
    """Plays the kubelet for the pods bound to a pool of simulated nodes."""

    def __init__(
        self,
        root: Path,
        pool: NodePool,
        *,
        worker_selector: tuple[str, str] = ("app.kubernetes.io/component", "worker"),
        gpu_env: str = "LEGACYGPU_VISIBLE_DEVICES",
        version: str = "v0.0.0-sim",
    ) -> None:
        self.root = root
        self.pool = pool
        self.worker_selector = worker_selector
        self._last_ip = 0  # pod addresses are handed out in turn, not lowest-free (see _free_ip)
        self.gpu_env = gpu_env
        self.version = version
        self.node_names = nodes.node_names(pool)
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.records: dict[str, PodRecord] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.finalising: dict[str, float] = {}  # uid -> when to retry the final delete
        self.stopping = threading.Event()
        kubeconfig = root / "admin.kubeconfig"
        self.server = ""
        self.ca_cert = root / "pki" / "ca.crt"
        self._kubeconfig = kubeconfig
        self.buildah = Buildah()
        self._local_images: dict[str, str | None] = {}

    def _api(self) -> client.ApiClient:
        return config.new_client_from_config(str(self._kubeconfig))

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        api = self._api()
        self.server = api.configuration.host
        self.core = client.CoreV1Api(api)
        procs.stop_recorded(self.root / "pods")
        self._remove_stale_containers()
        nodes.ensure_nodes(self.core, self.pool, version=self.version)
        for name in self.node_names:
            nodefs.ensure_tree(nodefs.node_root(self.root, name), self.pool.gpus)
        self.devices = DeviceManager(self.root, self.pool, self.node_names, self._api)
        self.devices.start()
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beat.start()
        threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()
        claims = provisioner.Provisioner(client.CoreV1Api(self._api()), provisioner.volumes_root(self.root),
                                         self.stopping)  # fmt: skip
        threading.Thread(target=claims.run, name="provisioner", daemon=True).start()
        self._wait_untainted()
        (self.root / "simulator.ready").write_text(self.server + "\n")
        log.info("simulator ready: nodes %s", ", ".join(self.node_names))
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(queue.Empty):
                    kind, pod = self.events.get(timeout=0.5)
                    self._on_event(kind, pod)
                    while not self.events.empty():
                        self._on_event(*self.events.get_nowait())
                self._tick()
        finally:
            for rec in list(self.records.values()):
                self._stop_process(rec, grace=5.0)
            self.devices.stop()
            (self.root / "simulator.ready").unlink(missing_ok=True)
            log.info("simulator stopped")

    def _remove_stale_containers(self) -> None:
        """Remove the working containers a previous simulator left behind (it was killed)."""
        if not (self.buildah.root / "storage").is_dir():
            return
        try:
            names = self.buildah.call("containers", "--format", "{{.ContainerName}}").split()
        except (ImageError, OSError) as exc:
            log.warning("listing stale pod containers: %s", exc)
            return
        for name in names:
            if name.startswith(podimage.CONTAINER_PREFIX):
                podimage.remove(self.buildah, name)

    def _image_mode(self) -> bool:
        template_file = self.root / "worker-command"
        return template_file.exists() and template_file.read_text().strip() == podimage.IMAGE_TEMPLATE

    def _local_image(self, image: str) -> str | None:
        if image not in self._local_images:
            try:
                self._local_images[image] = podimage.local_image(self.buildah, image)
            except OSError:
                self._local_images[image] = None
        return self._local_images[image]

    def _wait_untainted(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            tainted = [
                n.metadata.name
                for n in self.core.list_node(label_selector=f"{nodes.SIMULATED_LABEL}=true").items
                if n.metadata.name in self.node_names
                and any(t.key.startswith("node.kubernetes.io/") for t in (n.spec.taints or []))
            ]
            if not tainted:
                return
            time.sleep(0.5)
        log.warning("nodes still tainted after %.0f s", timeout)

    def _heartbeats(self) -> None:
        api = self._api()
        core, coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)
        last_status = 0.0
        while not self.stopping.is_set():
            with_status = time.monotonic() - last_status >= 30
            try:
                nodes.heartbeat(core, coordination, self.node_names, with_status=with_status)
                if with_status:
                    last_status = time.monotonic()
            except Exception:
                log.exception("node heartbeat failed")
            self.stopping.wait(10)

    def _watch(self) -> None:
        core = client.CoreV1Api(self._api())
        version = ""
        while not self.stopping.is_set():
            try:
                kwargs: dict[str, Any] = {"watch": True, "timeout_seconds": WATCH_SECONDS, "_preload_content": False}
                if version:
                    kwargs.update(resource_version=version, allow_watch_bookmarks=True)
                resp = core.list_pod_for_all_namespaces(**kwargs)
                try:
                    for line in resp:
                        for chunk in line.splitlines():
                            if not chunk.strip():
                                continue
                            event = json.loads(chunk)
                            obj = event.get("object") or {}
                            if event.get("type") == "ERROR":
                                raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
                            version = obj.get("metadata", {}).get("resourceVersion", version)
                            if event["type"] != "BOOKMARK":
                                self.events.put((event["type"], obj))
                finally:
                    resp.release_conn()
            except ApiException as exc:
                if exc.status == 410:
                    version = ""
                    continue
                log.warning("pod watch failed: %s", exc)
                self.stopping.wait(1)
            except Exception as exc:
                log.warning("pod watch broke: %s", exc)
                self.stopping.wait(1)

    # -- events ----------------------------------------------------------------------------
    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata", {})
        uid = meta.get("uid", "")
        if pod.get("spec", {}).get("nodeName") not in self.node_names:
            return
        if kind == "DELETED":
            self.pods.pop(uid, None)
            self.finalising.pop(uid, None)
            rec = self.records.pop(uid, None)
            if rec is not None:
                self._stop_process(rec, grace=0.0)
                log.info("pod %s/%s gone", rec.namespace, rec.name)
                with contextlib.suppress(OSError):
                    rec.pod_dir.rmdir()  # only when empty: a worker's log and files stay
            return
        self.pods[uid] = pod
        if meta.get("deletionTimestamp"):
            self._finalise(pod)
            return
        rec = self.records.get(uid) or self._admit(pod)
        if rec.worker and rec.proc is None and not rec.terminated and not rec.waiting_reason:
            self._start_process(rec)
        self._sync(rec)

    def _admit(self, pod: dict[str, Any]) -> PodRecord:
        meta, spec = pod["metadata"], pod["spec"]
        labels = meta.get("labels") or {}
        key, value = self.worker_selector
        status = pod.get("status") or {}
        used_ips = {r.pod_ip for r in self.records.values()}
        pod_ip = status.get("podIP") or self._free_ip(used_ips)
        rec = PodRecord(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            node=spec["nodeName"],
            pod_ip=pod_ip,
            host_ip=nodes.node_address(self.pool, spec["nodeName"]),
            pod_dir=self.root / "pods" / f"{meta['namespace']}_{meta['name']}",
            gpu_ids=self._assign_gpus(spec),
            worker=labels.get(key) == value or self._runs_image(spec),
            start_time=status.get("startTime") or now_rfc3339(),
            terminated=status.get("phase") in ("Succeeded", "Failed"),
        )
        for cs in status.get("containerStatuses") or []:
            rec.restarts = max(rec.restarts, int(cs.get("restartCount", 0)))
        rec.pod_dir.mkdir(parents=True, exist_ok=True)
        self.records[rec.uid] = rec
        log.info("pod %s/%s on %s: ip %s gpus %s worker=%s", rec.namespace, rec.name, rec.node,
                 rec.pod_ip, rec.gpu_ids, rec.worker)  # fmt: skip
        return rec

    def _runs_image(self, spec: dict[str, Any]) -> bool:
        """In image mode, a pod whose first container's image is held locally gets a process."""
        image = ((spec.get("containers") or [{}])[0]).get("image", "")
        return bool(image) and self._image_mode() and self._local_image(image) is not None

    def _free_ip(self, used: set[str]) -> str:
        """The next free address after the last one handed out.

        Like a CNI's IPAM, and unlike lowest-free, a deleted pod's address is not handed straight to the
        pod that replaces it: clients that still hold the old pod's address (a facade between two
        refreshes) would reach a process that is starting instead of a refused connection.
        """
        network = os.environ.get("E2E_POD_NETWORK") or "127.1"
        for step in range(1, 65536):
            n = (self._last_ip + step - 1) % 65535 + 1
            candidate = f"{network}.{n // 256}.{n % 256}"
            if n % 256 and candidate not in used:
                self._last_ip = n
                return candidate
        raise RuntimeError("no free loopback pod address")

    def _assign_gpus(self, spec: dict[str, Any]) -> list[int]:
        wanted = 0
        for container in spec.get("containers") or []:
            resources = container.get("resources") or {}
            amount = (resources.get("limits") or {}).get(self.pool.resource) or (resources.get("requests") or {}).get(
                self.pool.resource
            )
            wanted += int(amount or 0)
        taken = {i for r in self.records.values() if r.node == spec["nodeName"] for i in r.gpu_ids}
        advertised = self.devices.advertised(spec["nodeName"])
        count = self.pool.gpus if advertised is None else advertised
        free = [i for i in range(count) if i not in taken]
        return free[:wanted]

    def _finalise(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.finalising[meta["uid"]] = time.monotonic() + 5.0
        rec = self.records.pop(meta["uid"], None)
        if rec is not None:
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            self._stop_process(rec, grace=min(grace, 10.0))
            with contextlib.suppress(OSError):
                rec.pod_dir.rmdir()
        try:
            # Options go in the body: with a body present the API server ignores the query.
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )  # fmt: skip
            log.info("pod %s/%s finalised", meta["namespace"], meta["name"])
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("deleting pod %s/%s: %s", meta["namespace"], meta["name"], exc)

    # -- processes -------------------------------------------------------------------------
    def _start_process(self, rec: PodRecord) -> None:
        pod = self.pods[rec.uid]
        container = (pod["spec"].get("containers") or [{}])[0]
        template_file = self.root / "worker-command"
        template = template_file.read_text().strip() if template_file.exists() else "{command}"
        ctx = PodContext(pod, rec.pod_ip, rec.host_ip, rec.pod_dir, rec.gpu_ids, self.server, self.ca_cert,
                         self.gpu_env, nodefs.node_root(self.root, rec.node),
                         provisioner.volumes_root(self.root))  # fmt: skip
        try:
            write_credentials(self.core, ctx)
            if template == podimage.IMAGE_TEMPLATE:
                image = self._local_image(container.get("image", ""))
                if image is None:
                    self._wait(rec, "ErrImageNeverPull", f"image {container.get('image')!r} is not in the local "
                               "image storage (make images)", crash=False)  # fmt: skip
                    return
                env = pod_env(self.core, ctx, container)
                for key in ("KUBECONFIG", "E2E_POD_DIR"):  # host paths: the container uses in-cluster config
                    env.pop(key, None)
                rec.container = podimage.container_name(rec.uid, rec.restarts)
                argv = podimage.run_argv(self.buildah, self.core, ctx, container, env, image, rec.container)
            else:
                env = build_env(self.core, ctx, container)
                argv = render_argv(template, ctx, container, env)
                argv = self._with_volumes(ctx, container, argv) if argv else argv
            if not argv:
                self._wait(rec, "E2ENoCommand", f"worker command template {template!r} gave no argv", crash=False)
                return
            log_file = open(rec.pod_dir / f"{container.get('name', 'main')}.log", "ab")  # noqa: SIM115
            with log_file:
                rec.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    env=env, cwd=rec.pod_dir, start_new_session=True,
                )  # fmt: skip
        except (OSError, ValueError, KeyError, ApiException, ImageError) as exc:
            self._remove_container(rec)
            self._wait(rec, "E2EStartError", f"{type(exc).__name__}: {exc}", crash=True)
            return
        (rec.pod_dir / "pid").write_text(f"{rec.proc.pid}\nenv:POD_UID={rec.uid}\n")
        rec.started_at, rec.waiting_reason, rec.waiting_message = now_rfc3339(), "", ""
        rec.set_ready(False)
        probe = container.get("readinessProbe") or {}
        rec.next_probe = time.monotonic() + float(probe.get("initialDelaySeconds", 0))
        liveness = container.get("livenessProbe") or {}
        rec.next_liveness = time.monotonic() + float(liveness.get("initialDelaySeconds", 0))
        rec.liveness_failures = 0
        what = f"{podimage.describe(argv)} in image container {rec.container}" if rec.container else " ".join(argv)
        log.info("pod %s/%s: started pid %d: %s", rec.namespace, rec.name, rec.proc.pid, what)

    def _with_volumes(self, ctx: PodContext, container: dict[str, Any], argv: list[str]) -> list[str]:
        """A process pod's argv run with its volumes mounted (:mod:`e2ecluster.podmounts`)."""
        binds, read_only = podimage.prepare_volumes(self.core, ctx, container, service_account=False)
        binds, overlays, host = podmounts.process_binds(binds, podmounts.empty_dirs(ctx.pod["spec"], container))
        if host:
            log.info("pod %s/%s: %s left as this machine's folders", ctx.namespace, ctx.name, ", ".join(host))
        if not binds:
            return argv
        return [*podmounts.mount_wrapper(ctx.pod_dir / "mounts", binds, read_only, overlays), *argv]

    def _remove_container(self, rec: PodRecord) -> None:
        if rec.container:
            podimage.remove(self.buildah, rec.container)
            rec.container = ""

    def _wait(self, rec: PodRecord, reason: str, message: str, *, crash: bool) -> None:
        rec.waiting_reason, rec.waiting_message = reason, message
        rec.restart_at = time.monotonic() + (min(MAX_BACKOFF, 2.0**rec.restarts) if crash else 1e12)
        log.warning("pod %s/%s: %s: %s", rec.namespace, rec.name, reason, message)

    def _stop_process(self, rec: PodRecord, *, grace: float) -> None:
        proc, rec.proc = rec.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=max(grace, 0.5))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        (rec.pod_dir / "pid").unlink(missing_ok=True)
        self._remove_container(rec)
        log.info("pod %s/%s: process %d stopped (exit %s)", rec.namespace, rec.name, proc.pid, proc.returncode)

    def _tick(self) -> None:
        for uid, when in list(self.finalising.items()):
            if uid in self.pods and time.monotonic() >= when:
                self._finalise(self.pods[uid])
        for rec in list(self.records.values()):
            pod = self.pods.get(rec.uid)
            if pod is None:
                continue
            if rec.proc is not None:
                code = rec.proc.poll()
                if code is not None:
                    self._exited(rec, pod, code)
                elif not probe_alive((pod["spec"].get("containers") or [{}])[0], rec):
                    self._kill_unhealthy(rec, pod)
                else:
                    ready = probe_ready((pod["spec"].get("containers") or [{}])[0], rec)
                    if ready is not None:
                        rec.set_ready(ready)
            elif rec.worker and rec.waiting_reason and not rec.terminated and time.monotonic() >= rec.restart_at:
                rec.waiting_reason = ""
                self._start_process(rec)
            self._sync(rec)

    def _kill_unhealthy(self, rec: PodRecord, pod: dict[str, Any]) -> None:
        """A failed liveness probe: stop the process (grace period honoured) and restart it per policy."""
        log.info("pod %s/%s: liveness probe failed; killing the container", rec.namespace, rec.name)
        proc = rec.proc
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._stop_process(rec, grace=min(grace, 10.0))
        rec.proc = proc
        code = proc.returncode if proc is not None and proc.returncode is not None else 137
        self._exited(rec, pod, code)

    def _exited(self, rec: PodRecord, pod: dict[str, Any], code: int) -> None:
        proc, rec.proc = rec.proc, None
        (rec.pod_dir / "pid").unlink(missing_ok=True)
        self._remove_container(rec)
        code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as a kubelet reports
        rec.last_exit, rec.last_finished = code, now_rfc3339()
        rec.set_ready(False)
        policy = pod["spec"].get("restartPolicy", "Always")
        log.info("pod %s/%s: process %d exited %d", rec.namespace, rec.name, proc.pid if proc else -1, code)
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            rec.restarts += 1
            self._wait(rec, "CrashLoopBackOff", f"process exited with code {code}", crash=True)
        else:
            rec.terminated = True

    def _sync(self, rec: PodRecord) -> None:
        pod = self.pods.get(rec.uid)
        if pod is None:
            return
        if rec.worker and rec.proc is None and not rec.waiting_reason and not rec.terminated:
            return
        status = desired_status(pod, rec)
        digest = json.dumps(status, sort_keys=True)
        if digest == rec.written:
            return
        try:
            self.core.patch_namespaced_pod_status(rec.name, rec.namespace, {"status": status}, _content_type=SMP)
            rec.written = digest
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("status of %s/%s: %s", rec.namespace, rec.name, exc)

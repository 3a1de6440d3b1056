"""Leader election with a ``coordination.k8s.io/v1`` Lease: one active operator replica.

kopf's peering only warns about same-priority peers and keeps them all
running, so it cannot guarantee a single active replica; this module does,
the way client-go's leader election does:

* a replica **acquires** the Lease when it does not exist, is free, or its
  holder has not renewed it within ``leaseDurationSeconds``; every write
  carries the ``resourceVersion`` it read, so of two replicas racing for an
  expired Lease exactly one wins (the other gets 409);
* the leader **renews** every ``renew_seconds``; if it cannot renew before
  its own lease would expire it declares the lease **lost** and the
  operator stops (the pod restarts and becomes a standby), so two leaders
  never act at once as long as clocks agree within the lease margin;
* on a clean shutdown the leader **releases** the Lease (clears the
  holder), so a standby takes over at once instead of after expiry.

The kopf operator is started only after acquisition; a standby does nothing
but poll the Lease. Since all state is in the objects, the new leader
resumes where the old one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any

from legacygpu.core.kube.client import KubeApi
from legacygpu.core.kube.contract import format_time, now_utc, parse_time
from legacygpu.core.kube.errors import ApiConflictError, ApiError, ApiNotFoundError

__all__ = ["LeaseElector"]

_LEASES = ("coordination.k8s.io", "v1", "leases")

log = logging.getLogger(__name__)


class LeaseElector:
    """Acquire, renew and release one Lease for ``identity``."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float = 15.0,
        renew_seconds: float = 5.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.last_renewed: datetime.datetime | None = None

    async def _get(self) -> dict[str, Any] | None:
        try:
            return await self.api.get(*_LEASES, self.namespace, self.name)
        except ApiNotFoundError:
            return None

    async def _patch(self, patch: dict[str, Any]) -> None:
        await self.api.patch(*_LEASES, self.namespace, self.name, patch)

    def _spec(self, now: datetime.datetime, transitions: int, acquired: str | None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "acquireTime": acquired or format_time(now),
            "renewTime": format_time(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        """One attempt to take (or keep) the Lease; True when this replica holds it."""
        now = now_utc()
        lease = await self._get()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, 0, None),
            }
            try:
                await self.api.create(*_LEASES, self.namespace, body)
            except ApiConflictError:
                return False
            self.last_renewed = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or now > renewed + datetime.timedelta(seconds=duration)
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(now, transitions, acquired),
        }
        try:
            await self._patch(patch)
        except (ApiConflictError, ApiNotFoundError):
            return False
        if holder != self.identity:
            log.info("acquired lease %s/%s as %s (was %s)", self.namespace, self.name, self.identity, holder)
        self.last_renewed = now
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
            except ApiError as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            if not announced:
                log.info("standing by: lease %s/%s is held by another replica", self.namespace, self.name)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.renew_seconds)
        return False

    async def keep(self, lost: asyncio.Event) -> None:
        """Renew until cancelled; set ``lost`` if the Lease cannot be renewed in time."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self.try_acquire():
                    continue
                log.error("lease %s/%s was taken by another replica", self.namespace, self.name)
                lost.set()
                return
            except ApiError as exc:
                log.warning("could not renew lease %s/%s: %s", self.namespace, self.name, exc)
            if self.last_renewed is not None and now_utc() > self.last_renewed + datetime.timedelta(
                seconds=self.lease_seconds - self.renew_seconds
            ):
                log.error("lease %s/%s not renewed in time; giving up leadership", self.namespace, self.name)
                lost.set()
                return

    async def release(self) -> None:
        """Give the Lease up if this replica holds it, so a standby can take over now."""
        try:
            lease = await self._get()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None},
            }
            await self._patch(patch)
            log.info("released lease %s/%s", self.namespace, self.name)
        except ApiError as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)

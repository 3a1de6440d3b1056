"""Can a cluster's workers do their job? Asked of the API server before they find out with a 403.

A worker pod running under a ServiceAccount without the worker Role stays
``Running 0/1`` forever: its task watch is refused, it never becomes ready,
and nothing in the cluster's status said why. The operator asks the API
server instead, with one ``SubjectAccessReview`` per permission a worker
cannot do without (watch its tasks, claim them, write their status, store a
large result), and reports the first one missing as
``Degraded``/``WorkerForbidden`` naming the account, the verb and the
resource.

Answers are cached per (namespace, account) for a while
(:data:`CHECK_EVERY`), so a pass costs no API call most of the time and a
Role granted later clears the condition within that time. An operator that
may not create SubjectAccessReviews (an older chart) checks nothing: an
unknown answer is never reported as a problem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from legacygpu.core.kube.client import KubeApi
from legacygpu.core.kube.contract import GROUP, TASK_PLURAL
from legacygpu.core.kube.errors import ApiError, ApiUnavailableError

__all__ = ["CHECK_EVERY", "NEEDED", "AccessChecker"]

CHECK_EVERY = 30.0
"""Seconds an answer is reused before the API server is asked again."""

NEEDED: tuple[tuple[str, str, str, str], ...] = (
    ("watch", GROUP, TASK_PLURAL, ""),
    ("list", GROUP, TASK_PLURAL, ""),
    ("patch", GROUP, TASK_PLURAL, "status"),
    ("create", "", "configmaps", ""),
)
"""(verb, group, resource, subresource) a worker needs; a subset of ``WORKER_RULES``."""

log = logging.getLogger(__name__)


@dataclass
class AccessChecker:
    """Cached answers to "may this ServiceAccount do a worker's job in this namespace?"."""

    api: KubeApi
    answers: dict[tuple[str, str], tuple[float, str | None]] = field(default_factory=dict)
    disabled: bool = False

    async def _allowed(self, namespace: str, account: str, verb: str, group: str, resource: str, sub: str) -> bool:
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        if sub:
            attributes["subresource"] = sub
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{account}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                "resourceAttributes": attributes,
            },
        }
        answer = await self.api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
        return bool((answer.get("status") or {}).get("allowed"))

    async def problem(self, namespace: str, account: str) -> str | None:
        """What the account may not do that a worker must, or None (also when the answer is unknown)."""
        if self.disabled:
            return None
        key = (namespace, account)
        cached = self.answers.get(key)
        if cached is not None and time.monotonic() - cached[0] < CHECK_EVERY:
            return cached[1]
        try:
            answers = await asyncio.gather(*(self._allowed(namespace, account, *need) for need in NEEDED))
        except ApiUnavailableError:
            return cached[1] if cached is not None else None
        except ApiError as exc:
            # 403 (no RBAC for reviews) or 404 (no authorization API): stop asking rather than guess.
            log.warning("cannot check the workers' permissions (%s); not checking them", exc)
            self.disabled = True
            return None
        problem = None
        for (verb, group, resource, sub), allowed in zip(NEEDED, answers, strict=True):
            if not allowed:
                what = f"{resource}/{sub}" if sub else resource
                api_group = f"{group}/" if group else ""
                problem = (
                    f"ServiceAccount {namespace}/{account} of the worker pods may not {verb} {api_group}{what}: "
                    "the workers will get 403 and never become ready (grant the worker Role, see "
                    "`legacygpu operator rbac`, or set spec.serviceAccountName / --worker-service-account)"
                )
                break
        self.answers[key] = (time.monotonic(), problem)
        return problem

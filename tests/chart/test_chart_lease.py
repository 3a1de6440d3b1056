"""The leader-election Lease belongs to the release, so ``helm uninstall`` removes it (rendering only here;
tests/e2e/test_chart_install.py checks the removal on the real API server)."""

from __future__ import annotations

from chart.helmchart import containers, find, render


def test_the_lease_the_operator_is_told_to_use_is_an_object_of_the_release() -> None:
    docs = render()
    (lease,) = find(docs, "Lease")
    args = containers(docs)["Deployment/lg-legacygpu-operator/operator"]["args"]
    assert f"--lease-name={lease['metadata']['name']}" in args
    assert f"--lease-namespace={lease['metadata']['namespace']}" in args
    assert "holderIdentity" not in (lease.get("spec") or {})  # the first replica to start takes it
    assert lease["metadata"]["labels"]["app.kubernetes.io/instance"] == "lg"


def test_no_lease_without_leader_election() -> None:
    docs = render({"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    assert find(docs, "Lease") == []

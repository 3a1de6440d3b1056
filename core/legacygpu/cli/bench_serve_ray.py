"""Ray Serve as ``legacygpu bench serve``'s reference: the same ONNX files, served with onnxruntime.

Ray is not a dependency of legacygpu: :func:`python` makes a throwaway venv
(``.cache/bench-serve-ray`` by default, git-ignored) the first time, with
``ray[serve]`` pinned to :data:`RAY_VERSION` and the onnxruntime and numpy
versions this process runs, so both sides execute the model with the same
library. :func:`serving` writes a small Ray Serve application (below), runs it
with that venv's Python and yields its base URL until the block exits.

Per model there are two deployments: ``/<model>/single`` runs every request
on its own, ``/<model>/batched`` gathers them with ``@serve.batch`` (the same
maximum batch and wait as the worker's dynamic batching). Requests and
answers are the raw float32 bytes of the batch-1 tensor: Ray parses no JSON
header, which is less work than the Open Inference Protocol's binary
extension that our targets parse. Ray's per-request access log is off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click

__all__ = ["RAY_VERSION", "python", "serving"]

log = logging.getLogger(__name__)

RAY_VERSION = "2.40.0"
MAX_BATCH = 64
WAIT_SECONDS = 0.002

_APP = textwrap.dedent('''
    """Ray Serve serving ONNX files with onnxruntime; written and run by legacygpu bench serve."""
    import json, os, sys, time
    import numpy as np, onnxruntime as ort, ray
    from ray import serve
    from starlette.responses import Response

    spec, port = json.loads(open(sys.argv[1]).read()), int(sys.argv[2])
    QUIET = {"enable_access_log": False, "log_level": "WARNING"}
    OPTIONS = {"max_ongoing_requests": 256, "logging_config": QUIET, "ray_actor_options": {"num_cpus": 0}}

    @serve.deployment(**OPTIONS)
    class Single:
        def __init__(self, path, input_name, shape):
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.input_name, self.shape = input_name, shape

        async def __call__(self, request):
            x = np.frombuffer(await request.body(), np.float32).reshape(self.shape)
            return Response(self.session.run(None, {self.input_name: x})[0].tobytes())

    @serve.deployment(**OPTIONS)
    class Batched:
        def __init__(self, path, input_name, shape):
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.input_name, self.shape = input_name, shape

        @serve.batch(max_batch_size=spec["max_batch"], batch_wait_timeout_s=spec["wait_seconds"])
        async def run(self, xs):
            out = self.session.run(None, {self.input_name: np.concatenate(xs)})[0]
            return [out[i : i + 1] for i in range(len(xs))]

        async def __call__(self, request):
            x = np.frombuffer(await request.body(), np.float32).reshape(self.shape)
            return Response((await self.run(x)).tobytes())

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for m in spec["models"]:
        args = (m["path"], m["input"], m["shape"])
        serve.run(Single.bind(*args), name=m["name"] + "-single", route_prefix="/" + m["name"] + "/single")
        serve.run(Batched.bind(*args), name=m["name"] + "-batched", route_prefix="/" + m["name"] + "/batched")
    print("ready", flush=True)
    while True:
        time.sleep(3600)
''')


def python(venv: Path) -> Path:
    """The venv's Python, making the venv first if it is missing."""
    exe = venv / "bin" / "python"
    if not exe.exists():
        log.info("installing Ray Serve %s into %s (once; minutes)", RAY_VERSION, venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(exe), "-m", "pip", "install", "-q", f"ray[serve]=={RAY_VERSION}",
                        f"onnxruntime=={version('onnxruntime')}", f"numpy=={version('numpy')}"], check=True)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(exe: Path, workdir: Path, models: dict[str, dict[str, Any]]) -> Iterator[str]:
    """Ray Serve serving ``models`` (name to path, input name and batch-1 array ``x``); yields its URL."""
    spec = {"max_batch": MAX_BATCH, "wait_seconds": WAIT_SECONDS,
            "models": [{"name": name, "path": str(m["path"]), "input": m["input"], "shape": list(m["x"].shape)}
                       for name, m in models.items()]}  # fmt: skip
    (workdir / "ray_spec.json").write_text(json.dumps(spec))
    (workdir / "ray_app.py").write_text(_APP)
    port = _free_port()
    log_path = workdir / "ray.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([str(exe), str(workdir / "ray_app.py"), str(workdir / "ray_spec.json"), str(port)],
                                   stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert process.stdout is not None
        if "ready" not in process.stdout.readline():
            raise click.ClickException(f"Ray Serve did not start; the end of {log_path}:\n"
                                       + "\n".join(log_path.read_text().splitlines()[-20:]))
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

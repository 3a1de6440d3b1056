"""Settings shared by the CLI, the facade and the workers.

One settings class, read from flags (passed as keyword arguments) and
``LEGACYGPU_*`` environment variables. The API token is never made up by a
client: the facade generates one on first start, stores it in the data dir
(mode 0600) and every local command on the same machine reads it from there.

Three stored credentials, one per role (see :mod:`legacygpu.api.deps`): the
API token (``api-token``: users submit, read and cancel), the admin token
(``admin-token``: models, workers, drains) and the join token
(``join-token``: a worker registers with it and gets its own token back).

The data dir holds task inputs and results, so it is private to its owner:
:func:`secure_data_dir` makes it 0700 with every folder under it 0700 and
every file 0600, and the processes that write there run with umask 077 so
what they create later (the database's WAL, logs) is private too.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from legacygpu.core.limits import Limits

__all__ = [
    "ADMIN_TOKEN_FILE",
    "CONCURRENT_RUNS_ENV",
    "JOIN_TOKEN_FILE",
    "TOKEN_FILE",
    "WORKER_SECRET_FILE",
    "Settings",
    "default_data_dir",
    "ensure_admin_token",
    "ensure_join_token",
    "ensure_token",
    "ensure_worker_secret",
    "read_admin_token",
    "read_join_token",
    "read_token",
    "secure_data_dir",
]

TOKEN_FILE = "api-token"
ADMIN_TOKEN_FILE = "admin-token"
JOIN_TOKEN_FILE = "join-token"
WORKER_SECRET_FILE = "worker-secret"

CONCURRENT_RUNS_ENV = "LEGACYGPU_CONCURRENT_RUNS"
"""Runs an onnxruntime backend takes at once (its default when unset or empty).

The worker's backends read it (:func:`legacygpu.worker.backends.create_backend`) and
``legacygpu worker start --concurrent-runs`` sets it; it lives here so the CLI can name it
without importing the worker, which the operator's image does not hold.
"""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "legacygpu"


class Settings(BaseSettings):
    """Everything configurable, with the environment variable that sets it."""

    model_config = SettingsConfigDict(env_prefix="LEGACYGPU_", env_ignore_empty=True, extra="ignore")

    api_url: str = Field("http://127.0.0.1:8000", description="Where clients and workers find the facade.")
    api_token: str | None = Field(None, description="Users' bearer token; generated and stored when unset.")
    admin_token: str | None = Field(
        None, description="Administrators' bearer token (models, workers, drains); generated and stored when unset."
    )
    join_token: str | None = Field(
        None, description="Bearer token a worker registers with; generated and stored when unset."
    )
    worker_secret: str | None = Field(
        None, description="Key the facade derives each worker's own token from; generated and stored when unset."
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="Database, token, models.")
    cluster_backend: Literal["local", "kubernetes"] = "local"
    kube_namespace: str = "default"
    kube_cluster: str = Field("default", description="InferenceCluster the facade submits to (kubernetes).")
    api_grpc_port: int = Field(
        8001, ge=-1, le=65535,
        description="Port of the facade's Open Inference Protocol over gRPC (Triton's 8001); 0: any free port, "
        "-1: off.",
    )
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    max_json_depth: int = Field(Limits().max_json_depth, ge=2, le=200,
                                description=Limits.model_fields["max_json_depth"].description)
    max_parameters_bytes: int = Field(Limits().max_parameters_bytes, ge=256,
                                      description=Limits.model_fields["max_parameters_bytes"].description)
    max_stats_bytes: int = Field(Limits().max_stats_bytes, ge=256,
                                 description=Limits.model_fields["max_stats_bytes"].description)
    max_image_pixels: int = Field(Limits().max_image_pixels, ge=1,
                                  description=Limits.model_fields["max_image_pixels"].description)
    max_tensor_elements: int = Field(Limits().max_tensor_elements, ge=1,
                                     description=Limits.model_fields["max_tensor_elements"].description)
    database_busy_timeout_seconds: float = Field(
        5.0, gt=0, description="How long a database write waits for another process's lock before the request "
        "gets 503 with Retry-After (local mode).",
    )
    heartbeat_interval_seconds: float = Field(2.0, gt=0)
    heartbeat_timeout_seconds: float = Field(10.0, gt=0, description="Silence after which a worker is lost.")
    worker_retention_seconds: float = Field(
        3600.0, ge=0, description="How long a stopped or lost worker stays listed before it is removed."
    )
    retry_base_seconds: float = Field(1.0, ge=0)
    retry_cap_seconds: float = Field(60.0, ge=0)
    default_timeout_seconds: int = Field(600, ge=1)
    default_max_retries: int = Field(3, ge=0)
    scheduling_strategy: str = "least-loaded"
    worker_prefetch: int = Field(2, ge=1, description="Tasks a worker may hold at once (running + next).")
    worker_prefetch_max: int = Field(
        128, ge=1,
        description="More tasks a worker of short tasks may hold (local mode): enough to keep it busy for about "
        "25 ms at its recent model time while its results and the next push travel, at least "
        "worker_prefetch and at most this (a task's pre- and post-processing come on top of its model time, "
        "so a worker of a tiny model holds somewhat more work than that).",
    )
    task_retention_seconds: float = Field(
        86400.0, ge=0,
        description="Finished tasks, results included, are deleted this long after they finish (local mode); "
        "0 keeps them forever.",
    )

    @property
    def limits(self) -> Limits:
        """The request limits these settings put in force."""
        return Limits(**{name: getattr(self, name) for name in Limits.model_fields})

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "cluster.db"


def _read(data_dir: Path, name: str) -> str | None:
    path = Path(data_dir) / name
    return path.read_text().strip() if path.is_file() else None


def read_token(data_dir: Path) -> str | None:
    """The users' token the local facade stored, if any."""
    return _read(data_dir, TOKEN_FILE)


def read_admin_token(data_dir: Path) -> str | None:
    """The admin token the local facade stored, if any (readable only by the data dir's owner)."""
    return _read(data_dir, ADMIN_TOKEN_FILE)


def read_join_token(data_dir: Path) -> str | None:
    """The token workers register with, if the local facade stored one."""
    return _read(data_dir, JOIN_TOKEN_FILE)


def _stored_secret(data_dir: Path, name: str) -> str:
    """The secret in ``data_dir/name``, made (mode 0600) on first use."""
    path = Path(data_dir) / name
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def ensure_token(settings: Settings) -> str:
    """The token in force: the configured one, else the stored one, else a new stored one."""
    return settings.api_token or _stored_secret(settings.data_dir, TOKEN_FILE)


def ensure_admin_token(settings: Settings) -> str:
    """The admin token in force: the configured one, else the stored one, else a new stored one."""
    return settings.admin_token or _stored_secret(settings.data_dir, ADMIN_TOKEN_FILE)


def ensure_join_token(settings: Settings) -> str:
    """The worker-join token in force: the configured one, else the stored one, else a new stored one."""
    return settings.join_token or _stored_secret(settings.data_dir, JOIN_TOKEN_FILE)


def ensure_worker_secret(settings: Settings) -> bytes:
    """The key workers' own tokens are derived from: the configured one, else the stored one, else a new one."""
    return (settings.worker_secret or _stored_secret(settings.data_dir, WORKER_SECRET_FILE)).encode()


def secure_data_dir(data_dir: Path, *, umask: bool = False) -> None:
    """Create ``data_dir`` if needed and make it and everything under it private (folders 0700, files 0600).

    With ``umask`` the calling process also gets umask 077, so files it creates later are private too;
    only a server process (``api serve``, ``cluster start``) asks for that. What the process does not own
    is left as it is: a mounted volume's root belongs to root or to the pod's fsGroup, and only its
    owner may change its mode (the files the process writes in it are still private).
    """
    if umask:
        os.umask(0o077)
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _chmod_own(str(data_dir), 0o700)
    for root, folders, files in os.walk(data_dir):
        for names, mode in ((folders, 0o700), (files, 0o600)):
            for name in names:
                _chmod_own(os.path.join(root, name), mode)


def _chmod_own(path: str, mode: int) -> None:
    """``chmod`` a path this process owns; links (which may point outside the data dir) are left alone."""
    info = os.lstat(path)
    if not stat.S_ISLNK(info.st_mode) and info.st_uid == os.geteuid():
        os.chmod(path, mode)

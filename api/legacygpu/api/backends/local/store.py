"""SQLite persistence for the local cluster: tasks and workers.

The database (WAL mode) is the only truth in local mode: the coordinator
keeps no state it cannot rebuild from it, so a restarted facade resumes
every accepted task. Rows come back as plain dicts; JSON columns are
decoded on the way out and encoded on the way in. A task row translates to
and from the lifecycle's :class:`~legacygpu.core.lifecycle.TaskRecord`
(:func:`to_record`, :meth:`Store.write_task`), so every phase change is one
of the shared moves in :mod:`legacygpu.core.lifecycle`.

The coordinator calls the store from its one database thread, never from
the event loop; a write that finds the database locked by another process
waits up to the busy timeout, then raises ``sqlite3.OperationalError``
("database is locked"), which the facade answers with 503. :func:`probe`
reads the database's state on a connection of its own, for health checks.

Several writes can be made one transaction (:meth:`Store.transaction`): a
batch of a worker's completions lands whole or not at all.

Updates to tasks are compare-and-set (:meth:`Store.update_task` with
``expect``): a write that raced with another change touches no row and
returns False, which is how the coordinator refuses a stale completion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from legacygpu.core.errors import NotFoundError
from legacygpu.core.lifecycle import Attempt, TaskRecord
from legacygpu.core.scheduling import Requirements
from legacygpu.core.tasks import Phase

__all__ = ["EXPIRED_SQL", "PRUNE_BATCH", "PRUNE_SQL", "RUNNABLE_SQL", "Store", "probe", "to_record"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,
    device TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    tasks_succeeded INTEGER NOT NULL DEFAULT 0,
    tasks_failed INTEGER NOT NULL DEFAULT 0,
    stats TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    inputs TEXT NOT NULL,
    parameters TEXT NOT NULL,
    priority INTEGER NOT NULL,
    timeout_seconds INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    requirements TEXT NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    worker_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    scheduled_at REAL,
    started_at REAL,
    finished_at REAL,
    not_before REAL NOT NULL DEFAULT 0,
    latency_ms REAL,
    compute_ms REAL,
    history TEXT NOT NULL DEFAULT '[]',
    result TEXT
);
CREATE INDEX IF NOT EXISTS tasks_phase ON tasks (phase, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks (worker_id, phase);
CREATE INDEX IF NOT EXISTS tasks_deadline ON tasks (created_at + timeout_seconds)
    WHERE phase NOT IN ('Succeeded', 'Failed', 'Cancelled');
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
"""
"""Every scan of the coordinator's pass has an index: the queue by phase and priority, a worker's tasks,
unfinished tasks by deadline (partial: finished rows are not in it) and finished tasks by age."""

_JSON_COLUMNS = {"device", "stats", "inputs", "parameters", "requirements", "history", "result"}
_RECORD_COLUMNS = (
    "id, model, priority, timeout_seconds, max_retries, requirements, phase, reason, message, worker_id, "
    "attempts, created_at, scheduled_at, started_at, finished_at, not_before, latency_ms, compute_ms, history"
)
"""What the lifecycle reads: everything but the (possibly large) inputs, parameters and result."""
PRUNE_BATCH = 1000
"""Finished tasks deleted per statement, so one prune never holds the database for long."""
_RECORD_FIELDS = {f.name for f in dataclasses.fields(TaskRecord)} - {"id", "model", "created_at", "requirements"}


RUNNABLE_SQL = (
    f"SELECT {_RECORD_COLUMNS} FROM tasks WHERE phase = 'Queued' AND not_before <= ? "
    "ORDER BY priority DESC, seq LIMIT ? OFFSET ?"
)
"""The queue, best first: uses ``tasks_phase``."""
EXPIRED_SQL = (
    f"SELECT {_RECORD_COLUMNS} FROM tasks WHERE phase NOT IN ('Succeeded', 'Failed', 'Cancelled') "
    "AND created_at + timeout_seconds < ?"
)
"""Unfinished tasks past their deadline: the expression and condition of ``tasks_deadline``, which it uses."""
PRUNE_SQL = "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE finished_at < ? LIMIT ?)"
"""A batch of tasks finished before a moment: uses ``tasks_finished``."""


def to_record(row: Mapping[str, Any]) -> TaskRecord:
    """The lifecycle's view of a task row."""
    return TaskRecord(
        id=row["id"],
        model=row["model"],
        created_at=row["created_at"],
        phase=Phase(row["phase"]),
        reason=row.get("reason") or "",
        message=row.get("message") or "",
        priority=row["priority"],
        attempts=row["attempts"],
        max_retries=row["max_retries"],
        timeout_seconds=row["timeout_seconds"],
        requirements=Requirements(model=row["model"], **row["requirements"]),
        worker_id=row["worker_id"],
        scheduled_at=row["scheduled_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        not_before=row["not_before"] or None,
        latency_ms=row["latency_ms"],
        compute_ms=row["compute_ms"],
        result=row.get("result"),
        history=tuple(Attempt.from_dict(h) for h in row["history"]),
    )


def _columns(task: TaskRecord) -> dict[str, Any]:
    values = {name: getattr(task, name) for name in _RECORD_FIELDS}
    values["phase"] = str(task.phase)
    values["not_before"] = task.not_before or 0.0
    values["history"] = task.history_dicts()
    return values


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in _JSON_COLUMNS & record.keys():
        if record[key] is not None:
            record[key] = json.loads(record[key])
    return record


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()}


class Store:
    """Tasks and workers in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes inside one transaction: all of them are kept, or (on an exception) none.

        Holds the store's lock throughout, so other threads' writes wait rather than join it.
        """
        with self._lock:
            if self._db.in_transaction:  # nested: the outer one decides
                yield
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_decode(row) for row in self._db.execute(sql, tuple(params)).fetchall()]

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, tuple(params)).rowcount

    @staticmethod
    def _insert_sql(table: str, record: dict[str, Any]) -> tuple[str, list[Any]]:
        columns = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        return f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(record.values())

    # workers ------------------------------------------------------------------------------

    def add_worker(self, worker: dict[str, Any]) -> None:
        self._execute(*self._insert_sql("workers", _encode(worker)))

    def get_worker(self, worker_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM workers WHERE id = ?", [worker_id])
        if not rows:
            raise NotFoundError(f"no worker {worker_id!r}")
        return rows[0]

    def list_workers(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        if states is None:
            return self._query("SELECT * FROM workers ORDER BY registered_at")
        states = list(states)
        marks = ", ".join("?" for _ in states)
        return self._query(f"SELECT * FROM workers WHERE state IN ({marks}) ORDER BY registered_at", states)

    def update_worker(self, worker_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{key} = ?" for key in fields)
        if not self._execute(f"UPDATE workers SET {sets} WHERE id = ?", [*_encode(fields).values(), worker_id]):
            raise NotFoundError(f"no worker {worker_id!r}")

    def delete_workers(self, states: Iterable[str], silent_since: float) -> list[str]:
        """Remove workers in ``states`` not heard from since ``silent_since`` and holding no task; their ids."""
        states = list(states)
        marks = ", ".join("?" for _ in states)
        where = (
            f"state IN ({marks}) AND last_heartbeat < ? AND id NOT IN "
            "(SELECT worker_id FROM tasks WHERE phase IN ('Scheduled', 'Running') AND worker_id IS NOT NULL)"
        )
        with self._lock:
            ids = [row[0] for row in self._db.execute(f"SELECT id FROM workers WHERE {where}", [*states, silent_since])]
            if ids:
                self._db.execute(f"DELETE FROM workers WHERE {where}", [*states, silent_since])
        return ids

    def bump_worker_counter(self, worker_id: str, column: str) -> None:
        assert column in ("tasks_succeeded", "tasks_failed")
        self._execute(f"UPDATE workers SET {column} = {column} + 1 WHERE id = ?", [worker_id])

    # tasks --------------------------------------------------------------------------------

    def add_task(self, task: dict[str, Any]) -> None:
        self._execute(*self._insert_sql("tasks", _encode(task)))

    def get_task(self, task_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM tasks WHERE id = ?", [task_id])
        if not rows:
            raise NotFoundError(f"no task {task_id!r}")
        return rows[0]

    def get_record(self, task_id: str) -> TaskRecord:
        """The lifecycle's view of a task, read without its (possibly large) inputs, parameters and result."""
        rows = self._query(f"SELECT {_RECORD_COLUMNS} FROM tasks WHERE id = ?", [task_id])
        if not rows:
            raise NotFoundError(f"no task {task_id!r}")
        return to_record(rows[0])

    def list_tasks(
        self,
        *,
        phases: Iterable[str] | None = None,
        worker_id: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        where, params = self._task_filter(phases, worker_id, model)
        order = "seq DESC" if newest_first else "seq"
        rows = self._query(f"SELECT * FROM tasks {where} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset])
        with self._lock:
            count = self._db.execute(f"SELECT COUNT(*) FROM tasks {where}", params).fetchone()[0]
        return rows, int(count)

    def started_before(self, worker_id: str, cutoff: float) -> list[dict[str, Any]]:
        """``id``, ``model`` and ``attempts`` of the tasks Running on ``worker_id`` that started before ``cutoff``."""
        return self._query("SELECT id, model, attempts FROM tasks WHERE phase = 'Running' AND worker_id = ? "
                           "AND started_at < ?", [worker_id, cutoff])

    @staticmethod
    def _task_filter(
        phases: Iterable[str] | None, worker_id: str | None, model: str | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if phases is not None:
            phases = list(phases)
            clauses.append(f"phase IN ({', '.join('?' for _ in phases)})")
            params.extend(phases)
        if worker_id is not None:
            clauses.append("worker_id = ?")
            params.append(worker_id)
        if model is not None:
            clauses.append("model = ?")
            params.append(model)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    def runnable_tasks(self, now: float, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Queued tasks whose backoff has passed: higher priority first, then oldest first, ``limit`` at a time."""
        return self._query(RUNNABLE_SQL, [now, limit, offset])

    def scheduled_tasks(self) -> list[dict[str, Any]]:
        """Tasks placed on a worker and not yet handed to it, oldest first (uses ``tasks_phase``)."""
        return self._query("SELECT * FROM tasks WHERE phase = 'Scheduled' ORDER BY priority DESC, seq")

    def assigned_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT worker_id, COUNT(*) FROM tasks WHERE phase IN ('Scheduled', 'Running') "
                "AND worker_id IS NOT NULL GROUP BY worker_id"
            ).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def phase_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT phase, COUNT(*) FROM tasks GROUP BY phase").fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def update_task(self, task_id: str, *, expect: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Set ``fields`` if the row still matches ``expect``; False when it no longer does."""
        sets = ", ".join(f"{key} = ?" for key in fields)
        conditions = ["id = ?"]
        params: list[Any] = [*_encode(fields).values(), task_id]
        for key, value in (expect or {}).items():
            if value is None:
                conditions.append(f"{key} IS NULL")
            else:
                conditions.append(f"{key} = ?")
                params.append(value)
        return self._execute(f"UPDATE tasks SET {sets} WHERE {' AND '.join(conditions)}", params) == 1

    def write_task(self, before: TaskRecord, after: TaskRecord) -> bool:
        """Store the move ``before → after`` unless the row changed since ``before`` was read."""
        old, new = _columns(before), _columns(after)
        changed = {key: value for key, value in new.items() if old[key] != value}
        expect = {"phase": old["phase"], "attempts": before.attempts, "worker_id": before.worker_id}
        return self.update_task(after.id, expect=expect, **changed)

    def expired_tasks(self, now: float) -> list[dict[str, Any]]:
        """Unfinished tasks whose deadline (submission + timeout) has passed."""
        return self._query(EXPIRED_SQL, [now])

    def prune_finished(self, before: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` finished tasks that finished before ``before``; how many went."""
        return self._execute(PRUNE_SQL, [before, limit])

    def query_plan(self, sql: str, params: Iterable[Any] = ()) -> list[str]:
        """SQLite's plan for ``sql``, one line per step (to check that a scan uses its index)."""
        with self._lock:
            return [str(row[3]) for row in self._db.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params))]

    def recent_finished(self, since: float) -> list[dict[str, Any]]:
        return self._query(
            "SELECT id, phase, latency_ms, compute_ms, finished_at FROM tasks WHERE finished_at >= ? "
            "ORDER BY finished_at",
            [since],
        )


def probe(path: Path, lock_wait: float = 0.5) -> dict[str, Any]:
    """The database's state for health checks, on a short-lived connection of its own.

    ``database`` is ``ok``, ``locked`` (a write would wait: another process
    holds the write lock for longer than ``lock_wait``) or ``error`` (it
    cannot be opened or read), with ``database_message`` saying why, and
    ``workers_active`` counted (in WAL mode reading works while another
    connection holds the write lock; 0 when it cannot be read).
    """
    state: dict[str, Any] = {"database": "ok", "database_message": None, "workers_active": 0}
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=lock_wait, isolation_level=None)
    except sqlite3.Error as exc:
        return {**state, "database": "error", "database_message": f"cannot open {path}: {exc}"}
    try:
        state["workers_active"] = int(
            db.execute("SELECT COUNT(*) FROM workers WHERE state = 'active'").fetchone()[0]
        )
        db.execute("BEGIN IMMEDIATE")  # takes the write lock, or waits lock_wait and says it is held
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        locked = "locked" in str(exc) or "busy" in str(exc)
        state.update(database="locked" if locked else "error", database_message=str(exc))
    except sqlite3.Error as exc:
        state.update(database="error", database_message=str(exc))
    finally:
        db.close()
    return state

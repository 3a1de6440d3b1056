"""Logging helpers shared by the components."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quieted"]


@contextlib.contextmanager
def quieted(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger ``name`` to ``level`` inside the block, then put its level back.

    For commands that report what the logs would say in their own output (which ops
    fell back, for one): the level must not outlive the command, because tests and
    programs that embed the CLI run it in their own process.
    """
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)

"""Keeping tokens out of the logs.

Browsers cannot set headers on a WebSocket, so the dashboard sends its
token as ``?token=...``; uvicorn's access log would write that query string
as it came. :class:`RedactTokens` is a logging filter that masks any
``token=`` value in a record's message and arguments, and
:func:`uvicorn_log_config` is uvicorn's own logging configuration with that
filter on its access and error handlers.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

__all__ = ["RedactTokens", "redact", "uvicorn_log_config"]

_TOKEN = re.compile(r"(?i)((?:^|[?&\s])(?:token|access_token)=)[^&\s\"']+")


def redact(text: str) -> str:
    """``text`` with every ``token=<value>`` masked."""
    return _TOKEN.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """Masks ``token=...`` in the message and string arguments of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration, with :class:`RedactTokens` on every handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config

"""Structured JSON logs: one line per event, with the request id bound to every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

#: The id of the request being served, added to every log line written while serving it.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


class Lines:
    """Writes each rendered line to ``sys.stdout`` or ``sys.stderr`` as they are when it
    writes (not when it was made), and drops a line it cannot write: a closed or broken log
    stream must never fail the money event being logged."""

    def __init__(self, stream: str) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        stream: TextIO = getattr(sys, self._stream)
        try:
            stream.write(message + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    debug = info = warning = warn = error = err = critical = exception = failure = msg


def configure_logging(level: str = "info", *, stream: str = "stdout", cache: bool = True) -> None:
    """JSON lines on ``stream``: ``stdout`` for the service (one line per event, for a log
    shipper), ``stderr`` for the command line (whose stdout is the command's own output)."""
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: Lines(stream),
        cache_logger_on_first_use=cache,  # False lets tests capture lines (structlog.testing)
    )

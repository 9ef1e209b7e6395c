"""Structured logging of the daemon: one line per event, as text or as JSON.

Every event the daemon logs names itself and carries its facts as fields::

    log_event(logger, logging.WARNING, "gap", "stream %r: gap of %+.3f s", key, step_s,
              stream=key, gaps=3, gap_samples=301)

- ``--log-format text``: ``<time> WARNING brainformer_rt.serving.daemon: stream 'EEG': gap of +0.500 s
  [event=gap stream=EEG gaps=3 gap_samples=301]`` — the message for people, the fields in
  brackets for grep.
- ``--log-format json``: one JSON object per line, ``{"time", "level", "logger", "message",
  "event", ...fields}`` (non-finite floats are written as ``null``; lines logged without an event
  name, e.g. by libraries, have ``"event": "log"``), for lab pipelines.

Events that can repeat at the input rate (NaN chunks, a flat channel) go through an
:class:`EventThrottle` so a broken electrode cannot flood the log: at most one line per interval
and key, with the number of occurrences since the last line.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, Dict, Optional, Tuple

__all__ = ["DAEMON_LOGGER_NAME", "JsonLogFormatter", "TextLogFormatter", "configure_logging", "remove_log_handler", "log_event",
           "EventThrottle", "LOG_FORMATS"]

LOG_FORMATS = ("text", "json")

#: The logger of the serve daemon's events (pipeline, scheduler, start-up). The name is kept from
#: when one module held them all: it is part of every log line, and lab pipelines filter on it.
DAEMON_LOGGER_NAME = "brainformer_rt.serving.daemon"

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> Dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES}


def _json_value(value: Any) -> Any:
    """JSON-ready: non-finite floats → None, numpy scalars → Python, containers recursively."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``{time, level, logger, message, ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                                 "message": record.getMessage(), "event": "log"}  # "log": a line without an event name
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(_json_value(entry), default=str)


class TextLogFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> [key=value ...]`` on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items()) + "]"
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return repr(text) if (" " in text or not text) else text


_log_handler: Optional[logging.Handler] = None


def configure_logging(log_format: str, log_level: str) -> None:
    """Log lines on stderr in ``log_format`` (``text`` | ``json``) from ``log_level`` up.

    Replaces only the handler a previous call installed, so an embedding application keeps its own.
    """
    global _log_handler
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else TextLogFormatter())
    root = logging.getLogger()
    if _log_handler is not None:
        root.removeHandler(_log_handler)
    root.addHandler(handler)
    _log_handler = handler
    root.setLevel(getattr(logging, log_level.upper()))


def remove_log_handler() -> None:
    """Remove the handler :func:`configure_logging` installed (if any)."""
    global _log_handler
    if _log_handler is not None:
        logging.getLogger().removeHandler(_log_handler)
        _log_handler = None


def log_event(logger: logging.Logger, level: int, event: str, message: str, *args: Any, **fields: Any) -> None:
    """Log ``message % args`` as event ``event`` with ``fields`` (stream name, counts, ...)."""
    if logger.isEnabledFor(level):
        # A field named like a LogRecord attribute ("name", "module", ...) would be refused.
        extra = {(f"{key}_" if key in _STANDARD_ATTRIBUTES else key): value for key, value in fields.items()}
        logger.log(level, message, *args, extra={"event": event, **extra})


class EventThrottle:
    """At most one log line per ``interval_s`` and key; counts what it held back.

    ``ready(key)`` returns ``(True, n_suppressed)`` when a line may be written now (``n_suppressed``
    occurrences since the last written line were not logged), else ``(False, 0)``.
    """

    def __init__(self, interval_s: float = 5.0, clock=time.monotonic) -> None:
        self.interval_s = float(interval_s)
        self._clock = clock
        self._next: Dict[Any, float] = {}
        self._suppressed: Dict[Any, int] = {}

    def ready(self, key: Any) -> Tuple[bool, int]:
        now = self._clock()
        if now < self._next.get(key, -math.inf):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._next[key] = now + self.interval_s
        return True, self._suppressed.pop(key, 0)

    def forget(self, key: Any) -> int:
        """Start afresh for ``key`` (the condition ended); returns the occurrences not logged."""
        self._next.pop(key, None)
        return self._suppressed.pop(key, 0)

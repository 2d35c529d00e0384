"""Log output: one JSON object per line (or readable text on a terminal)."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson

# Attributes every LogRecord has; anything else was passed as `extra=` and is worth keeping.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


ACCESS_LOGGER = "keyturn.access"
_access = logging.getLogger(ACCESS_LOGGER)
_PIPE_BUF = 4096  # POSIX: a write of at most this much to a pipe is never interleaved


class _AccessLines:
    """Access lines for stderr, written once per turn of the event loop.

    On `keyturn serve` a write system call per request cost more than the rest of the line
    (55 µs of a GET /me's ~300 µs, measured with and without it): the requests answered in
    one turn of the loop share one. Nothing waits for it, and a line is written before the
    next turn starts. A batch stays under PIPE_BUF, so workers sharing a pipe never split a
    line; what is left at exit is written then.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._size = 0
        atexit.register(self.flush)

    def add(self, line: bytes) -> None:
        if self._size + len(line) > _PIPE_BUF:
            self.flush()
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop running: no turn to wait for
                self._write(line)
                return
        self._pending.append(line)
        self._size += len(line)

    def flush(self) -> None:
        if self._pending:
            batch = b"".join(self._pending)
            self._pending.clear()
            self._size = 0
            self._write(batch)

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()


# Set by `configure_logging` when lines go to stderr as JSON: access lines are then written
# there directly (see `log_access`).
_direct: _AccessLines | None = None


# The last millisecond formatted, and its text: the lines of one busy millisecond share it.
_stamp: tuple[int, str] = (-1, "")


def _time_text(created: float) -> str:
    """ISO 8601 UTC to the millisecond (formatting a datetime costs more than the rest of an
    access line's fields together)."""
    global _stamp
    millisecond = int(created * 1000)
    stamp = _stamp
    if stamp[0] != millisecond:
        moment = datetime.fromtimestamp(millisecond / 1000, UTC)
        stamp = _stamp = (millisecond, moment.isoformat(timespec="milliseconds"))
    return stamp[1]


def _entry(created: float, level: str, logger: str, message: str) -> dict[str, Any]:
    return {"time": _time_text(created), "level": level, "logger": logger, "message": message}


def log_access(
    *,
    request_id: str,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    client_ip: str | None,
) -> None:
    """One line per request, on the `keyturn.access` logger at INFO.

    In `keyturn serve` the line is the one `JSONFormatter` would write, written without the
    logging framework: its record, handler and formatter cost five times the line itself, a
    fifth of a GET /me (callgrind: 108k of 503k instructions). A host app's own logging
    configuration gets a normal record.
    """
    if not _access.isEnabledFor(logging.INFO):
        return
    message = f"{method} {path} {status}"
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "client_ip": client_ip,
    }
    lines = _direct
    if lines is not None:
        entry = _entry(time.time(), "info", ACCESS_LOGGER, message)
        entry.update(fields)
        try:
            lines.add(orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE))
        except orjson.JSONEncodeError:
            pass  # what orjson refuses (a lone surrogate), the logging path reports
        else:
            return
    _access.info(message, extra=fields)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name, record.getMessage())
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: a traceback can carry SQL parameters or tokens.
            entry["error"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        rid = extra.pop("request_id", None)
        prefix = f"[{rid[:8]}] " if rid else ""
        line = f"{record.levelname.lower():7} {record.name}: {prefix}{record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" ({record.exc_info[0].__name__})"
        return line


def configure_logging(level: int = logging.INFO) -> None:
    """The server's logging (a host app keeps its own): every request writes a line, so the
    record skips what no line shows (the stdlib's own "Optimization" advice)."""
    logging._srcfile = None  # no stack walk for the caller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _direct
    handler = logging.StreamHandler(sys.stderr)
    readable = sys.stderr.isatty()
    handler.setFormatter(TextFormatter() if readable else JSONFormatter())
    # The handler flushes after every record, so the text layer holds nothing back from
    # lines written below it.
    if _direct is not None:
        _direct.flush()
    binary = getattr(sys.stderr, "buffer", None)
    _direct = None if readable or binary is None else _AccessLines(binary)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True

"""Structured JSON logs, and the request id that ties a log line to the response a client holds.

Every request gets an id: the client's own ``x-request-id`` when it sends a sane one, else a fresh one.
The id goes into the ASGI scope (``zeroserve.request_id``), into a context variable that the JSON
formatter adds to every log line written while the request runs, and back to the client as the
``x-request-id`` response header. One access-log line per request records method, path, status,
duration, principal and request id.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_SCOPE_KEY = "zeroserve.request_id"
REQUEST_ID_HEADER = b"x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("zeroserve_request_id", default=None)

# An access-log entry: created (time.time()), method, path, status, duration_ms, principal, client and
# request id.
AccessFields = tuple[float, str, str, int, float, "str | None", "str | None", str]

# Ids from clients are echoed into logs and headers: keep them short and free of anything that could
# split a header or a log line.
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime"}

access_logger = logging.getLogger("zeroserve.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and the record's extras."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""
        self._milli = -1
        self._milli_text = ""

    def _timestamp(self, created: float) -> str:
        # strftime once per second and the text once per millisecond, not once per line: access logs
        # write thousands of lines a second, several in the same millisecond.
        milli = int(created * 1000)
        if milli != self._milli:
            second, fraction = divmod(milli, 1000)
            if second != self._second:
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._second = second
            self._milli_text = f"{self._second_text}.{fraction:03d}Z"
            self._milli = milli
        return self._milli_text

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: record.__dict__[key] for key in record.__dict__.keys() - _STANDARD_ATTRIBUTES}
        # uvicorn's copy of the message with ANSI colour codes: noise in a log, the message has it all.
        fields.pop("color_message", None)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields)

    def line(self, created: float, levelname: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """The JSON line of one log entry; ``fields`` are its extras (``request_id`` among them, or the
        request id of the context)."""
        entry: dict[str, Any] = {
            "ts": self._timestamp(created),
            "level": levelname.lower(),
            "logger": logger,
            "message": message,
        }
        request_id = fields.get("request_id") or request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in fields.items():
            entry.setdefault(key, value)
        return orjson.dumps(entry, default=str).decode()

    def access_line(self, fields: AccessFields) -> str:
        """What ``line`` makes of an access-log record with these fields (same keys, same order), built
        in one go."""
        created, method, path, status, duration_ms, principal, client, request_id = fields
        return orjson.dumps({
            "ts": self._timestamp(created),
            "level": "info",
            "logger": access_logger.name,
            "message": f"{method} {path} {status}",
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "principal": principal,
            "client": client,
        }, default=str).decode()


# Pending text past this size is written out at once, whatever the interval says.
_MAX_PENDING_CHARS = 64 * 1024
# An access-log entry is held unformatted until it is written; it counts as a line of about this size.
_ACCESS_LINE_CHARS = 240


class _BatchingStreamHandler(logging.StreamHandler):
    """Collects lines and writes them to the stream in one write at most every ``flush_interval_s`` (at
    once for a WARNING or worse, past ``_MAX_PENDING_CHARS``, at exit, and on ``flush_logging``): a
    write to stderr is a system call per call (Python's stderr is unbuffered, write-through), and an
    access-log line per request must not cost one. A process killed outright loses at most the lines of
    the last interval.

    Access-log entries wait as their fields (``write_access``) and are formatted when written, a batch
    at a time: the same work, but in one tight loop instead of spread over the requests, where each
    piece ran with cold caches (measured in the gateway under load: building and queueing a formatted
    line took ~11 us of a request's time, about four times what the same code takes in a loop)."""

    def __init__(self, stream: Any, flush_interval_s: float = 0.5) -> None:
        super().__init__(stream)
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self._pending: list[str | AccessFields] = []
        self._pending_chars = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record), record.levelno)
        except Exception:
            self.handleError(record)

    def write_access(self, fields: AccessFields) -> None:
        """Write an access-log line (see ``_direct_access_handler``); the formatter is a ``JsonFormatter``."""
        self.acquire()
        try:
            self._write(fields, logging.INFO)
        except Exception:
            # What handleError does for a record: report on stderr, never fail the request.
            if logging.raiseExceptions:
                sys.stderr.write("--- Logging error: an access log line could not be written ---\n")
        finally:
            self.release()

    def _write(self, line: str | AccessFields, levelno: int) -> None:
        self._pending.append(line)
        self._pending_chars += len(line) + 1 if isinstance(line, str) else _ACCESS_LINE_CHARS
        now = time.monotonic()
        if (
            now - self._last_flush >= self.flush_interval_s
            or levelno >= logging.WARNING
            or self._pending_chars >= _MAX_PENDING_CHARS
        ):
            self._last_flush = now
            self._write_out()

    def _write_out(self) -> None:
        """Write the pending lines in one call, then flush the stream (the caller holds the lock)."""
        if self._pending:
            formatter = self.formatter
            if not isinstance(formatter, JsonFormatter):  # replaced since the entries were queued
                formatter = JsonFormatter()
            access_line = formatter.access_line
            text = "\n".join(
                [line if isinstance(line, str) else access_line(line) for line in self._pending]
            ) + "\n"
            self._pending.clear()
            self._pending_chars = 0
            self.stream.write(text)
        if hasattr(self.stream, "flush"):
            self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self._write_out()
        finally:
            self.release()


_handler: _BatchingStreamHandler | None = None


class TextFormatter(logging.Formatter):
    """For a person at a terminal: ``12:04:31 warning zeroserve.autoscaler: fraud/v3: ...``, the request
    id in brackets when there is one. No extras, no colour codes."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        text = f"{clock} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if request_id is not None:
            text += f" [{request_id}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    level: str | int = "INFO", *, stream: Any = None, text: bool = False
) -> logging.Handler:
    """Send every log line of the process to ``stream`` (stderr) as JSON, or as plain lines for a person
    (``text``); returns the handler."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _BatchingStreamHandler(stream or sys.stderr)
    _handler.setFormatter(TextFormatter() if text else JsonFormatter())
    atexit.register(flush_logging)
    root.addHandler(_handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn installs its own plain-text handlers; let its records reach ours instead.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our access log replaces uvicorn's (it carries the request id and the principal).
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO: the backends' replica health probes would be a line every two
    # seconds per replica. A failed probe is an exception, not one of those lines, and the autoscaler
    # logs what it means for the replica.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return _handler


def _direct_access_handler() -> _BatchingStreamHandler | None:
    """Our JSON handler when it is the one place an access-log record would go (no filter on the access
    logger, no other handler on the way up, the handler lets INFO through); None otherwise.

    Then the access-log entry goes straight to the handler, skipping the ``LogRecord`` and the handler
    chain (about 15 us of a request's CPU); the line written is the one ``JsonFormatter`` makes of the
    record.
    Anything else listening (a test's ``caplog``, another handler, a filter) gets the record as usual.
    """
    handler = _handler
    if handler is None or access_logger.filters or handler.filters or handler.level > logging.INFO:
        return None
    if not isinstance(handler.formatter, JsonFormatter):
        return None
    found = 0
    node: logging.Logger | None = access_logger
    while node is not None:
        for other in node.handlers:
            if other is not handler:
                return None
            found += 1
        if not node.propagate:
            break
        node = node.parent
    return handler if found == 1 else None


def flush_logging() -> None:
    """Write out what is buffered (the observability loop calls this every second)."""
    if _handler is not None:
        # A closed stream (a test's, at exit) has nothing left to write to.
        with contextlib.suppress(OSError, ValueError):
            _handler.flush()


# Generated ids: 32 hex digits (a uuid4's length), a random per-process prefix and a counter. Unique
# like a uuid4 in practice, without a getrandom() system call and a UUID object per request; a forked
# child draws a prefix of its own.
_id_prefix = ""
_id_counter = itertools.count()


def _new_id_source() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return request_id_of(value)
    return new_request_id()


def request_id_of(sent: bytes | None) -> str:
    """The request id for a request whose first ``x-request-id`` header is ``sent`` (None: none)."""
    if sent is not None and _SAFE_REQUEST_ID.match(sent):
        return sent.decode("ascii")
    return new_request_id()


class RequestIdMiddleware:
    """Assigns the request id, returns it in ``x-request-id``, and writes the access log line."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering
        header_value = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, header_value))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                log_access(scope, status, time.perf_counter() - started, request_id)
            request_id_var.reset(token)


def log_access(scope: Scope, status: int, elapsed_s: float, request_id: str) -> None:
    principal = getattr(scope.get("zeroserve.principal"), "name", None)
    method, path = scope["method"], scope["path"]
    # Whole microseconds, in milliseconds: what round(ms, 3) gives, without its decimal rounding.
    duration_ms = round(elapsed_s * 1e6) / 1000.0
    client = (scope.get("client") or (None,))[0]
    handler = _direct_access_handler()
    if handler is not None:
        # Formatted when written (the handler's docstring says why); the line is JsonFormatter.line's.
        handler.write_access((time.time(), method, path, status, duration_ms, principal, client, request_id))
        return
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "principal": principal,
        "client": client,
        "request_id": request_id,
    }
    # makeRecord + handle rather than .info(): skips the stack walk that finds the caller.
    access_logger.handle(access_logger.makeRecord(
        access_logger.name, logging.INFO, __file__, 0, "%s %s %d", (method, path, status), None, extra=fields
    ))

"""The HTTP protocol the service runs with: uvicorn's httptools protocol with bounds on what a
client may send before the application sees the request.

uvicorn's httptools protocol reads request lines and headers of any size and count and waits for
them as long as the client likes. This one answers 431 once the headers pass `[limits]
max_header_bytes` or `max_headers`, and 408 when they are not complete within the body timeout,
each with a FHIR OperationOutcome, and closes the connection; beyond `max_connections` (open
connections or requests in progress of this worker) it answers 503 with an OperationOutcome where
uvicorn would answer plain text. (The body has its own size limit and timeout in the application.)
Worker processes read the limits from the configuration their app factory loaded (`use_limits`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import fhir
from .config import Limits

_limits: Limits | None = None


def use_limits(limits: Limits) -> None:
    """Set the limits for the connections this process accepts from now on."""
    global _limits
    _limits = limits


async def _busy(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The answer beyond `[limits] max_connections`: 503, and the connection closed."""
    body = orjson.dumps(fhir.operation_outcome("error", "transient", "the server is busy; try again later"))
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    """Raised inside a parser callback to stop reading a request that broke a limit."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = _limits
        self._max_bytes = limits.max_header_bytes if limits else 16 * 1024
        self._max_count = limits.max_headers if limits else 100
        self._header_timeout = limits.body_timeout_seconds if limits else 30.0
        self._header_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.cycle is None and self._refusal is None:
            self._start_header_timer()  # the first bytes of the next request on this connection
        try:
            super().data_received(data)
        except _Refused:  # pragma: no cover - httptools wraps callback errors; kept for safety
            self._refuse()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse()
            return
        self._respond(400, "the request is not valid HTTP")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if len(self.headers) >= self._max_count:
            self._refusal = (431, f"the request has more than {self._max_count} headers")
            raise _Refused()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            # uvicorn's own refusal is plain text; this one is FHIR, through the same flow.
            app, self.app, self.limit_concurrency = self.app, _busy, None
            try:
                super().on_headers_complete()
            finally:
                self.app, self.limit_concurrency = app, limit
            return
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._max_bytes:
            self._refusal = (431, f"the request line and headers exceed {self._max_bytes} bytes")
            raise _Refused()

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None and not self.transport.is_closing():
            self._respond(408, "the request headers did not arrive in time")

    def _refuse(self) -> None:
        status, message = self._refusal or (400, "the request is not valid HTTP")
        self._respond(status, message)

    def _respond(self, status: int, message: str) -> None:
        body = orjson.dumps(fhir.operation_outcome("error", "too-costly" if status == 431 else "timeout"
                                                   if status == 408 else "structure", message))
        self.transport.write(b"".join([
            STATUS_LINE[status],
            b"content-type: application/fhir+json\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n",
            b"connection: close\r\n\r\n", body]))
        self.transport.close()


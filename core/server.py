"""The HTTP protocol the service runs with: uvicorn's httptools protocol with bounds on what a
client may send before the application sees the request.

uvicorn's httptools protocol reads request lines and headers of any size and count and waits for
them as long as the client likes. This one answers 431 once the headers pass `[limits]
max_header_bytes` or `max_headers`, and 408 when they are not complete within the body timeout,
each with a FHIR OperationOutcome, and closes the connection; a body that is not complete within
the timeout after its headers gets 408 too. Beyond `max_connections` (open connections or
requests in progress of this worker) it answers 503 with an OperationOutcome where uvicorn would
answer plain text. (The body's size limit is the application's.)
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


# The scope key by which the application learns that this protocol bounds the time its body takes
# (the application then needs no timer of its own; under another server it keeps one).
BODY_DEADLINE = "ttp.body_deadline"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One timer per request, armed when its first byte arrives (or the connection opens) and
    disarmed when its last byte is in: the headers must arrive within the body timeout, and the
    body within one more. Between requests of a kept connection, uvicorn's keep-alive timeout
    applies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = _limits
        self._max_bytes = limits.max_header_bytes if limits else 16 * 1024
        self._max_count = limits.max_headers if limits else 100
        self._timeout = limits.body_timeout_seconds if limits else 30.0
        self._header_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading_body = False  # the headers are in, the body is not
        self._extended = False      # the body's own allowance has been granted

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
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
        self.scope[BODY_DEADLINE] = True  # type: ignore[literal-required]
        self._header_bytes = 0
        self._reading_body = self._extended = False
        if self._timer is None:  # the first bytes of a further request on this connection
            self._arm()

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
        self._reading_body = True
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

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_body = False
        super().on_message_complete()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._max_bytes:
            self._refusal = (431, f"the request line and headers exceed {self._max_bytes} bytes")
            raise _Refused()

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self._timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._reading_body:
            self._respond(408, "the request headers did not arrive in time")
            return
        if not self._extended:  # the body gets a timeout of its own after the headers'
            self._extended = True
            self._timer = self.loop.call_later(self._timeout, self._too_slow)
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # answered already (a refusal before the body): just close
            return
        self._respond(408, "the request body did not arrive in time")

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


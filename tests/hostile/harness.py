"""A gateway under attack: the ASGI app driven directly (raw paths, raw headers, bodies in chunks,
nothing normalised by an HTTP client), its store snapshotted before and after each request."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage_dump import snapshot
from ttp_gateway.core.app import GatewayApp, create_app
from ttp_gateway.core.config import Config, load_config
from ttp_gateway.core.xmlcodec import parse_xml

from conftest import DEMO_CONFIG, DEMO_KEY

# Limits small enough that exceeding them costs the suite little; each is proven at its default
# size in test_limits.py.
LIMITS = {"max_body_bytes": 256 * 1024, "max_unauthenticated_body_bytes": 16 * 1024,
          "body_timeout_seconds": 2.0, "max_items": 200, "max_created": 500,
          "max_answer_bytes": 512 * 1024, "max_depth": 32, "max_header_bytes": 8 * 1024, "max_headers": 40}

# Callers besides the demo key: each scoped to something else than the requests below name.
KEYS = [
    {"name": "demo", "key": DEMO_KEY},
    {"name": "num-site", "key": "num-site-key-0001", "studies": ["num"],
     "domains": ["dic_erlangen", "eyematics", "codex"]},
    {"name": "gpas-only", "key": "gpas-only-key-0002", "endpoints": ["gpas"]},
    {"name": "reader", "key": "reader-key-0003", "operations": ["pseudonymize", "dePseudonymize"]},
    {"name": "other-domain", "key": "other-domain-key-0004", "domains": ["PATIENT"]},
]
METRICS_KEY = "metrics-key-0005"


def hostile_config(storage_url: str) -> Config:
    return load_config(DEMO_CONFIG, environ={}).with_overrides(
        storage={"url": storage_url}, limits=LIMITS, auth={"api_keys": KEYS},
        metrics={"key_sha256": hashlib.sha256(METRICS_KEY.encode()).hexdigest()})


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == wanted), None)

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip()

    def resource(self) -> Any:
        """The body as a FHIR JSON dict, read in the format its Content-Type names."""
        if "xml" in self.media_type:
            return parse_xml(self.body)
        return orjson.loads(self.body)


@dataclass
class Request:
    method: str = "POST"
    path: str = "/"
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunks: list[bytes] | None = None  # the body in several messages; a None entry stalls


class GatewayUnderTest:
    """One app on one store, driven on an event loop of its own."""

    def __init__(self, config: Config) -> None:
        self.app: GatewayApp = create_app(config)
        self.repository = self.app.gateway.repository
        self.loop = asyncio.new_event_loop()

    def send(self, request: Request, timeout: float = 30.0) -> Response:
        return self.loop.run_until_complete(asyncio.wait_for(exchange(self.app, request), timeout))

    def snapshot(self) -> dict[str, list[str]]:
        return snapshot(self.repository)

    def close(self) -> None:
        self.loop.close()
        self.repository.close()


async def exchange(app: Any, request: Request) -> Response:
    raw_path = request.path.encode("utf-8", "surrogateescape")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": request.method, "scheme": "http", "path": request.path, "raw_path": raw_path,
             "query_string": request.query, "root_path": "", "headers": list(request.headers),
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
    pending: list[bytes | None] = list(request.chunks) if request.chunks is not None else [request.body]
    stalled = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            if chunk is None:  # a client that stops sending
                await stalled.wait()
            return {"type": "http.request", "body": chunk or b"", "more_body": bool(pending)}
        await stalled.wait()
        return {"type": "http.disconnect"}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Response(start["status"], list(start.get("headers", [])), body)


def headers(*pairs: tuple[str, str | bytes], key: str | None = DEMO_KEY) -> list[tuple[bytes, bytes]]:
    found = [(name.lower().encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1"))
             for name, value in pairs]
    if key is not None:
        found.append((b"apikey", key.encode()))
    return found

"""The ASGI application: one error boundary around every route, and the request pipeline of the
operations that plugins declare.

    POST {base}/{endpoint}/${operation}           an operation (Parameters, or a batch Bundle)
    GET  {base}/{endpoint}/${operation}?name=value  an operation that allows GET (query parameters)
    GET  {base}/{endpoint}/metadata               CapabilityStatement
    GET  {base}/{endpoint}/OperationDefinition/{id}
    GET  {base}/{endpoint}/{ResourceType}?...      a type-level search a plugin declared
    GET  /healthz   /readyz   /metrics

Whatever happens — an unknown path, a wrong method, a malformed body, a limit, a bug — the client
gets a FHIR OperationOutcome in the negotiated format, never a stack trace or a bare text. A real
bug answers 500 with an error id that the log line carries as well (with the error's type and
place, never values). A trailing slash is served like the path without it; nothing redirects.

Before the body is read, the caller is authenticated when the headers carry credentials; a body
that must be parsed to find its API key (the guide's `apikey` parameter) is read under the smaller
`max_unauthenticated_body_bytes` limit. Bodies are read within `body_timeout_seconds`, large ones
are decoded off the event loop, and every limit is checked before any work (`config.Limits`).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import logging
import os
import time
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qs, parse_qsl

import orjson
from .threads import in_thread as run_in_threadpool
from starlette.routing import Match, Route

from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Repository, StorageError, StoreRegistry

from . import capability, codec, fhir
from .auth import ApiKey, Authenticator, Client, ScopeKinds, api_key_from_settings
from .config import Config, ConfigError, Limits, load_config
from .errors import CodecError, FhirError, InvalidRequest, NotAuthenticated, NotFound, PayloadTooLarge
from .execution import Answer, Executor, internal_error, outcome_of, storage_failure
from .gateway import Call, Gateway, utc_now
from .keystore import KEYS
from .observability import Metrics, audit_trail, configure_logging
from .operations import Args, Budget, Operation, Search, bind, scoped_values
from .plugins import OperationTable, Plugins, load_plugins
from .server import BODY_DEADLINE, use_limits

log = logging.getLogger("ttp_gateway.request")
INLINE_BODY = 16 * 1024    # reads with smaller bodies run on the event loop when reads never block
INLINE_DECODE = 64 * 1024  # larger bodies are decoded on a worker thread
_ROUTES_REMEMBERED = 1024  # operation paths whose route is remembered
_WANTED_HEADERS = {b"accept", b"content-type", b"content-length", b"apikey", b"x-api-key", b"authorization"}

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class RequestTimeout(FhirError):
    status = 408
    issue_code = "timeout"


class MethodNotAllowed(FhirError):
    status = 405
    issue_code = "not-supported"

    def __init__(self, allowed: tuple[str, ...], message: str = "") -> None:
        super().__init__(message or f"this path allows {', '.join(allowed)} only")
        self.allowed = allowed


class HeadersTooLarge(FhirError):
    status = 431
    issue_code = "too-costly"


class _ClientGone(Exception):
    """The client disconnected before its request was read."""


class GatewayApp:
    """The ASGI app of one gateway."""

    def __init__(self, gateway: Gateway, operations: OperationTable, searches: Iterable[Search] = ()) -> None:
        self.gateway = gateway
        self.operations = operations
        self.searches = {(s.endpoint, s.resource_type): s for s in searches}
        self.base_path = gateway.config.server.base_path
        self.limits: Limits = gateway.config.limits
        self.executor = Executor(gateway.repository, self.limits.max_answer_bytes)
        labels: dict[str, set[str]] = {endpoint: {*ops, "metadata", "OperationDefinition"}
                                       for endpoint, ops in operations.by_endpoint.items()}
        for endpoint, resource_type in self.searches:
            labels.setdefault(endpoint, {"metadata", "OperationDefinition"}).add(resource_type)
        self.metrics = Metrics(labels)
        metrics = gateway.config.data["metrics"]
        self._metrics_enabled = bool(metrics["enabled"]) and not int(metrics["port"])
        self._metrics_key = str(metrics.get("key_sha256") or "").lower()
        self._reads_block = gateway.repository.reads_block
        self._inline_writes = gateway.repository.inline_writes
        # Concurrent small writes answered together, unless group commit is switched off.
        self._coalescing = gateway.config.group_commit is not False
        self.auth = Authenticator.from_settings(gateway.config.data["auth"], self._stored_keys)
        self.keys = self.auth.keys
        self._challenge = (self.auth.challenge() or "").encode()
        self._definitions: dict[str, dict[str, dict[str, Any]]] = {}
        self._capabilities: dict[str, dict[str, Any]] = {}
        published = utc_now().strftime("%Y-%m-%d")
        for endpoint in sorted({*operations.by_endpoint, *(e for e, _ in self.searches)}):
            ops = operations.by_endpoint.get(endpoint, {})
            base_url = f"{self.base_path}/{endpoint}"
            self._definitions[endpoint] = {op.definition_id: capability.operation_definition(op, base_url)
                                           for op in ops.values()}
            self._capabilities[endpoint] = capability.capability_statement(
                endpoint, ops.values(), base_url, published,
                [s for (e, _), s in self.searches.items() if e == endpoint])
        # Starlette's routing matches paths and methods; answers come from the boundary. The
        # paths that matched are remembered (their parameters are only read, never changed).
        self._routed: dict[tuple[str, str], tuple[Callable[..., Awaitable[tuple[int, Any]]], dict[str, str]]] = {}
        self._routes = [
            Route(self.base_path + "/{endpoint:path}/${operation}", self.invoke, methods=["POST", "GET"]),
            Route(self.base_path + "/{endpoint:path}/metadata", self.metadata, methods=["GET"]),
            Route(self.base_path + "/{endpoint:path}/OperationDefinition/{id}", self.definition, methods=["GET"]),
            Route(self.base_path + "/{endpoint:path}/{resource_type}", self.search, methods=["GET"]),
            Route(self.base_path + "/{endpoint:path}", self.system_batch, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
        ]

    # --- the boundary -------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        headers: dict[str, str] = {}
        request = _Request(scope, headers)
        try:
            self._read_headers(scope, headers)
            request.negotiate(codec.declared_format(headers.get("content-type")))
            handler, params = self._route(scope)
            status, answer = await handler(request, receive, params)
        except _ClientGone:
            return
        except FhirError as error:
            status, answer = error.status, outcome_of(error)
            if isinstance(error, MethodNotAllowed):
                request.extra_headers.append((b"allow", ", ".join(error.allowed).encode()))
            elif status == 401 and self._challenge:
                request.extra_headers.append((b"www-authenticate", self._challenge))
        except StorageError as error:
            status, answer = storage_failure(error)
        except Exception:  # noqa: BLE001 - nothing leaves without an OperationOutcome
            status, answer = internal_error("request", request.op)
        media_type = request.media_type
        if isinstance(answer, Answer):
            content = answer.content
        elif isinstance(answer, tuple):  # (bytes, media type) of a non-FHIR service route
            content, media_type = answer
        else:
            content = _encoded(answer, request.fmt)
        written = audit_trail.written()
        if written is not None:  # the records of what this request did go out before its answer
            try:
                await written
            except OSError:
                status, answer = internal_error("audit trail", request.op)
                content, media_type = _encoded(answer, request.fmt), request.media_type
        if request.observed:
            self.metrics.observe(request.endpoint, request.operation, status, time.perf_counter() - started,
                                 answer.items if isinstance(answer, Answer) else 0)
            if log.isEnabledFor(logging.INFO):
                endpoint, operation = self.metrics.labels(request.endpoint, request.operation)
                log.info("request", extra={"endpoint": endpoint, "operation": operation, "status": status,
                                           "ms": round((time.perf_counter() - started) * 1000, 2),
                                           "items": answer.items if isinstance(answer, Answer) else 0,
                                           "client": request.client.name if request.client else None})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()),
                                (b"content-length", str(len(content)).encode()), *request.extra_headers]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else content})

    def _read_headers(self, scope: dict[str, Any], found: dict[str, str]) -> None:
        """The few request headers the pipeline reads (a repeated one counts once, the first),
        after checking that the headers stay within their limits."""
        raw = scope["headers"]
        if len(raw) > self.limits.max_headers:
            raise HeadersTooLarge(f"the request has more than {self.limits.max_headers} headers")
        size = 0
        for name, value in raw:
            size += len(name) + len(value)
            if name in _WANTED_HEADERS:
                key = name.decode("latin-1")
                if key not in found:
                    found[key] = value.decode("latin-1")
        if size > self.limits.max_header_bytes:
            raise HeadersTooLarge(f"the request headers exceed {self.limits.max_header_bytes} bytes")

    def _route(self, scope: dict[str, Any]) -> tuple[Callable[..., Awaitable[tuple[int, Any]]], dict[str, str]]:
        path = scope["path"]
        found = self._routed.get((path, scope["method"]))
        if found is not None:
            return found
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path[:-1]}  # served like the path without it; no redirect
        partial: tuple[Route, dict[str, Any]] | None = None
        for route in self._routes:
            match, child = route.matches(scope)
            if match is Match.FULL and self._serves(route, child["path_params"]):
                params = child["path_params"]
                if (route.endpoint == self.invoke and len(self._routed) < _ROUTES_REMEMBERED
                        and self.operations.lookup(params["endpoint"], params["operation"]) is not None):
                    self._routed[(path, scope["method"])] = (route.endpoint, params)  # operations' paths only
                return route.endpoint, params
            if match is Match.PARTIAL and partial is None:  # the path, but not the method
                partial = route, child["path_params"]
        if partial is None:
            raise NotFound("there is nothing at this path", issue_code="not-found")
        route, params = partial
        op = self.operations.lookup(params["endpoint"], params["operation"]) if route.endpoint == self.invoke else None
        if op is not None and not op.allows_get(params["operation"]):
            raise MethodNotAllowed(("POST",), f"${params['operation']} allows POST only")
        raise MethodNotAllowed(tuple(sorted(route.methods or ())))

    def _serves(self, route: Route, params: dict[str, Any]) -> bool:
        """Whether a route whose path matched answers it: a Bundle posted to a path is a batch
        only where the path is an endpoint's base (elsewhere it is another route's path)."""
        return route.endpoint != self.system_batch or params["endpoint"] in self.operations.by_endpoint

    # --- operations ---------------------------------------------------------------------------
    async def invoke(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        endpoint, name = params["endpoint"], params["operation"]
        request.endpoint, request.operation, request.observed = endpoint, name, True
        op = self.operations.lookup(endpoint, name)
        if op is None:
            if endpoint not in self.operations.by_endpoint:
                raise NotFound("there is no such endpoint", issue_code="not-found")
            raise NotFound(f"this operation is not provided at endpoint {endpoint!r}", issue_code="not-supported")
        request.op, request.operation = op, op.name
        via_get = request.scope["method"] in ("GET", "HEAD")  # HEAD: a GET without the answer's body
        if via_get and not op.allows_get(name):
            raise MethodNotAllowed(("POST",), f"${name} changes state: use POST")
        body, resource, client = await self._received(request, receive, endpoint, op, via_get)
        budget = Budget(self.limits.max_items, self.limits.max_created, self.limits.max_depth)
        fmt = request.fmt
        if resource["resourceType"] == "Bundle" and (op.batch or op.transaction):
            calls = self._bind_batch(endpoint, op, resource, client, budget)
            for call in calls:
                if isinstance(call, Call):
                    call.query = _query(request.scope)
            answer = await run_in_threadpool(self.executor.run_batch, op, calls, fmt,
                                             resource.get("type") == "transaction")
        else:
            call = self._bind(op, resource, client, budget)
            call.invoked_as, call.http_method = name, request.scope["method"]
            call.query = _query(request.scope)
            # A small read on an embedded store takes less time than the hop to a worker thread;
            # a small write there runs on the loop too and awaits its group's commit.
            if op.quick_read and not self._reads_block and len(body) <= INLINE_BODY:
                answer = self.executor.run(op, call, fmt)
            elif op.coalesce is not None and self._coalescing and len(body) <= INLINE_BODY:
                answer = await self.executor.coalescer.run(op, call, fmt)
            elif op.quick_write and self._inline_writes and len(body) <= INLINE_BODY:
                answer = await self.executor.run_on_loop(op, call, fmt)
            else:
                answer = await run_in_threadpool(self.executor.run, op, call, fmt)
        return answer.status, answer

    async def system_batch(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        """A `batch` or `transaction` Bundle posted to an endpoint's base: each entry names its
        operation in `request.url` (`$name`, relative or absolute), as FHIR clients send lists."""
        endpoint = params["endpoint"]
        request.endpoint, request.operation, request.observed = endpoint, "", True
        _, resource, client = await self._received(request, receive, endpoint, None, False)
        if resource["resourceType"] != "Bundle" or resource.get("type") not in ("batch", "transaction"):
            raise InvalidRequest(f"POST to the base of {endpoint!r} takes a batch or transaction Bundle; "
                                 "operations are posted to [base]/$name")
        calls = self._bind_batch(endpoint, None, resource, client,
                                 Budget(self.limits.max_items, self.limits.max_created, self.limits.max_depth))
        for call in calls:
            if isinstance(call, Call):
                call.query = _query(request.scope)
        ops = {call.operation for call in calls if isinstance(call, Call)}
        op = ops.pop() if len(ops) == 1 else None
        if op is not None:
            request.op, request.operation = op, op.name
        answer = await run_in_threadpool(self.executor.run_batch, op, calls, request.fmt,
                                         resource.get("type") == "transaction")
        return answer.status, answer

    async def _received(self, request: "_Request", receive: Receive, endpoint: str, op: Operation | None,
                        via_get: bool) -> tuple[bytes, dict[str, Any], Client]:
        """The request's body (decoded) and its caller, allowed to call `op` (any operation of
        the endpoint when None: each entry of a Bundle is checked for its own)."""
        headers = request.headers
        client: Client | None = None
        if self.auth.header_credentials(headers):  # refused callers are not read further
            client = self._authorised(await self._authenticate(headers, None, endpoint), endpoint, op)
        if client is not None or self.auth.allows_anonymous(endpoint):
            limit = self.limits.max_body_bytes
        else:  # the key can only be in the body: read little until it is known
            limit = min(self.limits.max_body_bytes, self.limits.max_unauthenticated_body_bytes)
        if via_get:
            body, resource = b"", _query_parameters(request.scope)
            codec.check_strings(resource)
        else:
            body = await self._read_body(receive, headers.get("content-length"), limit,
                                         BODY_DEADLINE not in request.scope)
            in_format = codec.request_format(headers.get("content-type"), body)
            if "content-type" not in headers:  # no Content-Type: answer in the body's format
                request.negotiate(in_format)
            if len(body) > INLINE_DECODE:
                resource = await run_in_threadpool(codec.decode, body, in_format)
            else:
                resource = codec.decode(body, in_format)
        body_key = _pop_body_key(resource)  # removed either way: operations never see it
        if client is None:
            client = self._authorised(await self._authenticate(headers, body_key, endpoint), endpoint, op)
        request.client = client
        return body, resource, client

    async def _authenticate(self, headers: dict[str, str], body_key: str | None, endpoint: str) -> Client:
        if self.auth.blocking(headers):  # argon2, or fetching a token issuer's keys
            return await run_in_threadpool(self.auth.authenticate, headers, body_key, endpoint)
        return self.auth.authenticate(headers, body_key, endpoint)

    @staticmethod
    def _authorised(client: Client, endpoint: str, op: Operation | None) -> Client:
        if op is None:
            if not client.may_enter(endpoint):
                raise NotAuthenticated(f"this caller may not call operations at {endpoint!r}")
            return client
        if not client.may_call(op.endpoint, op.name):
            raise NotAuthenticated(f"this caller may not call ${op.name} at {op.endpoint!r}")
        return client.for_call(op.endpoint, op.name)

    def _bind_batch(self, endpoint: str, op: Operation | None, bundle: dict[str, Any], client: Client,
                    budget: Budget) -> list[Call | FhirError]:
        """The calls of a `batch` (or `transaction`) Bundle of Parameters, each entry one call of
        `op`, or when None of the operation its `request.url` names; entries that cannot be bound
        are answered alone (in a transaction, they fail it)."""
        kind = bundle.get("type")
        if op is not None and not _takes_bundle(op, kind):
            kinds = [k for k, accepted in (("batch", op.batch), ("transaction", op.transaction)) if accepted]
            raise InvalidRequest(f"${op.name} accepts Bundles of type {' or '.join(repr(k) for k in kinds)}")
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise InvalidRequest("Bundle.entry must be an array")
        budget.items(len(entries), "Bundle.entry")
        calls: list[Call | FhirError] = []
        for index, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    raise InvalidRequest(f"entry {index + 1} has no resource")
                request = entry.get("request")
                if request is not None and not isinstance(request, dict):
                    raise InvalidRequest(f"entry {index + 1}: request must be an object")
                url, method = (request or {}).get("url", ""), (request or {}).get("method", "POST")
                if not isinstance(url, str) or not isinstance(method, str):
                    raise InvalidRequest(f"entry {index + 1}: request.url and request.method must be strings")
                if method != "POST":
                    raise InvalidRequest(f"entry {index + 1}: operations in a Bundle are called with POST")
                name = url.rsplit("/", 1)[-1].split("?", 1)[0]
                if op is None:
                    calls.append(self._bind_entry(endpoint, name, kind, entry["resource"], client, budget, index))
                    continue
                if name and self.operations.lookup(op.endpoint, name.lstrip("$")) is not op:
                    raise InvalidRequest(f"entry {index + 1} asks for another operation")
                calls.append(self._bind(op, entry["resource"], client, budget))
            except PayloadTooLarge:
                raise  # a limit of the whole request
            except FhirError as error:
                if kind == "transaction":
                    raise
                calls.append(error)
        return calls

    def _bind_entry(self, endpoint: str, name: str, kind: Any, resource: dict[str, Any], client: Client,
                    budget: Budget, index: int) -> Call:
        """An entry of a Bundle posted to the endpoint's base: the operation its URL names."""
        if not name.startswith("$"):
            raise InvalidRequest(f"entry {index + 1}: request.url must name an operation ($name)")
        op = self.operations.lookup(endpoint, name[1:])
        if op is None:
            raise NotFound(f"entry {index + 1}: this operation is not provided at endpoint {endpoint!r}",
                           issue_code="not-supported")
        if not _takes_bundle(op, kind):
            raise InvalidRequest(f"entry {index + 1}: ${op.name} cannot be part of a {kind} Bundle")
        return self._bind(op, resource, self._authorised(client, endpoint, op), budget)

    def _bind(self, op: Operation, resource: dict[str, Any], client: Client, budget: Budget) -> Call:
        if resource.get("resourceType") != "Parameters":
            raise InvalidRequest(f"${op.name} expects a Parameters resource")
        args = bind(op.parameters, resource.get("parameter", []), budget=budget)
        for scope, value in scoped_values(op.parameters, args):
            if not client.may_use(scope, value):
                raise NotAuthenticated(f"this caller may not use the {scope} it named")
        return Call(self.gateway, op, args, client)

    async def _read_body(self, receive: Receive, declared: str | None, limit: int, timed: bool = True) -> bytes:
        """The body, within `limit` bytes; with `timed`, within the body timeout (the service's
        own HTTP protocol bounds it before the application sees the request, `core.server`)."""
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            if not declared.isdigit():
                raise InvalidRequest("the Content-Length header is not a number")
            raise self._too_large(limit)
        if not timed:
            return await self._receive_body(receive, limit)
        try:  # one deadline for the whole body: a timer, not a task per message
            async with asyncio.timeout(self.limits.body_timeout_seconds):
                return await self._receive_body(receive, limit)
        except TimeoutError:
            raise RequestTimeout("the request body did not arrive in time") from None

    async def _receive_body(self, receive: Receive, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, limit: int) -> PayloadTooLarge:
        """The refusal of a body over `limit`, declared or streamed."""
        return PayloadTooLarge(f"the request body exceeds {limit} bytes"
                               + ("" if limit == self.limits.max_body_bytes else
                                  " (the limit while the caller is not yet known; send the API key "
                                  "in a header to send more)"))

    def _stored_keys(self) -> list[ApiKey]:
        with self.gateway.repository.read() as unit:
            return [api_key_from_settings(k.as_settings()) for k in unit[KEYS].get_api_keys()]

    # --- searches -----------------------------------------------------------------------------
    async def search(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        endpoint, resource_type = params["endpoint"], params["resource_type"]
        search = self.searches.get((endpoint, resource_type))
        if search is None:
            raise NotFound("there is nothing at this path")
        request.endpoint, request.operation, request.observed = endpoint, resource_type, True
        op = request.op = search.as_operation()
        client = request.client = self._authorised(await self._authenticate(request.headers, None, endpoint),
                                                       endpoint, op)
        query = _query(request.scope)
        codec.check_strings(query)
        if sum(len(values) for values in query.values()) > self.limits.max_items:
            raise PayloadTooLarge(f"the search has more than {self.limits.max_items} parameter values")
        call = Call(self.gateway, op, Args(query), client, invoked_as=resource_type, http_method="GET",
                    query=query)
        answer = await run_in_threadpool(self.executor.run, op, call, request.fmt)
        return answer.status, answer

    # --- metadata -----------------------------------------------------------------------------
    async def metadata(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        statement = self._capabilities.get(params["endpoint"])
        if statement is None:
            raise NotFound("there is no such endpoint")
        request.endpoint, request.operation, request.observed = params["endpoint"], "metadata", True
        query = parse_qs(request.scope["query_string"].decode("latin-1"))
        elements = [e for value in query.get("_elements", []) for e in value.split(",")]
        if any(e.strip() for e in elements):
            statement = capability.elements_subset(statement, elements)
        return 200, statement

    async def definition(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        definitions = self._definitions.get(params["endpoint"])
        if definitions is None:
            raise NotFound("there is no such endpoint")
        request.endpoint, request.operation, request.observed = params["endpoint"], "OperationDefinition", True
        wanted = params["id"]
        found = definitions.get(wanted) or next((d for d in definitions.values() if d["code"] == wanted), None)
        if found is None:
            raise NotFound("there is no such OperationDefinition")
        return 200, found

    # --- the service's own routes -------------------------------------------------------------
    async def healthz(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        return 200, (b'{"status":"ok"}', "application/json")

    async def readyz(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        try:
            await run_in_threadpool(self.gateway.repository.ping)
            facts: dict[str, Any] = {"storage": "ok"}
            for reported in self.gateway.plugins.hook.ttp_readiness(gateway=self.gateway):
                facts.update(reported or {})
        except Exception as error:  # noqa: BLE001 - not ready, whatever the reason
            return 503, (orjson.dumps({"status": "unavailable", "error": type(error).__name__}), "application/json")
        return 200, (orjson.dumps({"status": "ready", **facts}), "application/json")

    async def render_metrics(self, request: "_Request", receive: Receive, params: dict[str, str]) -> tuple[int, Any]:
        if not self._metrics_enabled:
            raise NotFound("there is nothing at this path")
        if self._metrics_key:
            presented = request.headers.get("apikey") or request.headers.get("x-api-key") or ""
            given = hashlib.sha256(presented.encode()).hexdigest()
            if not hmac.compare_digest(given, self._metrics_key):
                raise NotAuthenticated("the metrics need their own key (header 'apikey')")
        return 200, self.metrics.render()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    self.gateway.plugins.hook.ttp_shutdown(gateway=self.gateway)
                    self.gateway.repository.close()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


class _Request:
    """What the boundary learns about a request while it handles it."""

    __slots__ = ("scope", "headers", "endpoint", "operation", "op", "client", "observed", "extra_headers",
                 "fmt", "media_type")

    def __init__(self, scope: dict[str, Any], headers: dict[str, str]) -> None:
        self.scope = scope
        self.headers = headers
        self.fmt: codec.Format = "json"
        self.media_type = codec.DEFAULT_MEDIA_TYPE["json"]
        self.endpoint = ""
        self.operation = ""
        self.op: Operation | None = None
        self.client: Client | None = None
        self.observed = False
        self.extra_headers: list[tuple[bytes, bytes]] = []

    def negotiate(self, body_format: codec.Format | None) -> None:
        """The answer's format: `_format`, Accept, then the request body's format (HAPI's order)."""
        self.fmt, self.media_type = codec.response_media_type(
            _format_parameter(self.scope), self.headers.get("accept"), body_format)


def _encoded(resource: dict[str, Any], fmt: codec.Format) -> bytes:
    """An answer the boundary built itself; JSON if the format cannot hold it (it always can:
    messages never quote what a client sent)."""
    try:
        return codec.encode(resource, fmt)
    except (ValueError, TypeError):
        return orjson.dumps(fhir.operation_outcome("fatal", "exception", "the answer could not be encoded"))


def _format_parameter(scope: dict[str, Any]) -> str | None:
    query = scope["query_string"]
    if not query:
        return None
    values = parse_qs(query.decode("latin-1")).get("_format")
    return values[0] if values else None


def _query(scope: dict[str, Any]) -> dict[str, list[str]]:
    """The URL query, each name with its values (an `apikey` there is ignored, see below)."""
    raw = scope["query_string"]
    if not raw:
        return {}
    found: dict[str, list[str]] = {}
    for name, value in _query_pairs(raw):
        if name != "apikey":
            found.setdefault(name, []).append(value)
    return found


def _query_parameters(scope: dict[str, Any]) -> dict[str, Any]:
    """A GET invocation's query string as the Parameters it stands for: each parameter a
    valueString (the binder reads integers and codes from strings); `_format` and the other
    control parameters are not the operation's, and keys do not travel in URLs (they end up in
    proxies' logs): an `apikey` there is ignored."""
    return {"resourceType": "Parameters", "parameter": [
        {"name": name, "valueString": value} for name, value in _query_pairs(scope["query_string"])
        if not name.startswith("_") and name != "apikey"]}


def _query_pairs(raw: bytes) -> list[tuple[str, str]]:
    """(name, value) of a URL query; a query that is not UTF-8 (raw or percent-encoded) is a 400,
    as a body would be, not a value quietly changed."""
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise CodecError("the URL query is not valid UTF-8") from None


def _takes_bundle(op: Operation, kind: Any) -> bool:
    return (kind == "batch" and op.batch) or (kind == "transaction" and op.transaction)


def _pop_body_key(resource: dict[str, Any]) -> str | None:
    parameters = resource.get("parameter")
    if not isinstance(parameters, list):
        return None
    keys = [p for p in parameters if isinstance(p, dict) and p.get("name") == "apikey"]
    if not keys:
        return None
    resource["parameter"] = [p for p in parameters if not (isinstance(p, dict) and p.get("name") == "apikey")]
    if len(keys) > 1:
        raise InvalidRequest("parameter 'apikey' must not be repeated")
    value = next((v for k, v in keys[0].items() if k.startswith("value")), None)
    if not isinstance(value, str):
        raise InvalidRequest("parameter 'apikey' needs a string value")
    return value


# --- building a gateway ---------------------------------------------------------------------------

def load_gateway_plugins(config: Config, extra_plugins: tuple[object, ...] = ()) -> tuple[Plugins, list[str]]:
    """The plugins of a configuration and the problems of the configuration (empty if none)."""
    plugins = load_plugins(config.data["plugins"].get("disabled", []), extra_plugins)
    return plugins, config_problems(config, plugins)


def config_problems(config: Config, plugins: Plugins) -> list[str]:
    kinds = ScopeKinds()
    plugins.hook.ttp_scope_kinds(kinds=kinds)
    problems = kinds.problems(config.data["auth"])
    problems += [problem for found in plugins.hook.ttp_check_config(config=config) for problem in found or ()]
    return problems


def build_gateway(config: Config, *, repository: Repository | None = None,
                  clock: Callable[[], Any] | None = None, extra_plugins: tuple[object, ...] = (),
                  start: bool = True) -> tuple[Gateway, OperationTable]:
    """Load plugins, check their configuration, open and migrate storage, set the plugins up in
    dependency order and collect their operations; with `start`, run their start-up (seeding,
    warm caches) as a serving process does."""
    plugins, problems = load_gateway_plugins(config, extra_plugins)
    if problems:
        raise ConfigError("; ".join(problems))
    stores = StoreRegistry()
    plugins.hook.ttp_stores(stores=stores)
    repository = repository or open_repository(config.storage_url, stores, group_commit=config.group_commit)
    repository.migrate()
    gateway = Gateway(config=config, repository=repository, plugins=plugins.manager, clock=clock or utc_now)
    plugins.call_in_order("ttp_setup", gateway=gateway)
    operations = OperationTable.collect(plugins.call_in_order("ttp_operations", gateway=gateway))
    gateway.searches = [s for found in plugins.call_in_order("ttp_searches", gateway=gateway) for s in found or ()]
    if start:
        plugins.call_in_order("ttp_startup", gateway=gateway)
    return gateway, operations


def create_app(config: Config | None = None, *, repository: Repository | None = None,
               clock: Callable[[], Any] | None = None, extra_plugins: tuple[object, ...] = ()) -> GatewayApp:
    """The ASGI app of a gateway. Every worker process calls this once."""
    gateway, operations = build_gateway(config or load_config(), repository=repository, clock=clock,
                                        extra_plugins=extra_plugins)
    return GatewayApp(gateway, operations, gateway.searches)


def app_from_environment() -> GatewayApp:
    """Factory for uvicorn workers: the configuration file comes from TTP_GATEWAY_CONFIG."""
    config = load_config()
    logging_settings = config.data["logging"]
    configure_logging(logging_settings.get("level", "INFO"), logging_settings.get("format", "json"),
                      logging_settings.get("audit_file", ""))
    use_limits(config.limits)
    log.info("worker starting", extra={"pid": os.getpid(), "config": config.source})
    app = create_app(config)
    # What start-up built lives as long as the worker; keeping it out of the cyclic garbage
    # collector's scans halves the time large batches spend in collections. A large request
    # makes hundreds of thousands of short-lived, acyclic objects: collecting after every 700
    # of them (the default) costs a large Bundle a fifth of its time.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return app


__all__ = ["GatewayApp", "app_from_environment", "build_gateway", "create_app"]

"""The Starlette application: routes every `POST [base]/{endpoint}/$operation` to the operation
a plugin declared, with formats, authentication, binding and errors handled here once.

    POST {base}/{endpoint}/${operation}           an operation (Parameters, or a batch Bundle)
    GET  {base}/{endpoint}/${operation}?name=value  an operation that allows GET (query parameters)
    GET  {base}/{endpoint}/metadata               CapabilityStatement
    GET  {base}/{endpoint}/OperationDefinition/{id}
    GET  /healthz   /readyz   /metrics
"""

from __future__ import annotations

import gc
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qs, parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Repository, StorageError

from . import capability, codec, fhir
from .auth import Client, KeyRing, api_key_from_settings
from .config import Config, ConfigError, load_config
from .errors import (FhirError, InvalidRequest, NotAuthenticated, NotFound, PayloadTooLarge)
from .gateway import Call, Gateway, utc_now
from .observability import Metrics, configure_logging
from .operations import Operation, Result, bind, scoped_values
from .plugins import OperationTable, plugin_manager

log = logging.getLogger("ttp_gateway.request")
INLINE_BODY = 16 * 1024  # reads with smaller bodies run on the event loop when reads never block


class GatewayApp:
    """The request pipeline of one gateway; `starlette` is the ASGI app serving it."""

    def __init__(self, gateway: Gateway, operations: OperationTable) -> None:
        self.gateway = gateway
        self.operations = operations
        server = gateway.config.server
        self.base_path = server.base_path
        self.max_body = server.max_body_bytes
        self.metrics = Metrics()
        self._reads_block = gateway.repository.reads_block
        auth = gateway.config.data["auth"]
        self.keys = KeyRing((api_key_from_settings(k) for k in auth.get("api_keys", [])),
                            self._stored_keys, require_key=bool(auth.get("require_api_key", True)))
        self._definitions: dict[str, dict[str, dict]] = {}
        self._capabilities: dict[str, dict] = {}
        published = utc_now().strftime("%Y-%m-%d")
        for endpoint, ops in operations.by_endpoint.items():
            base_url = f"{self.base_path}/{endpoint}"
            self._definitions[endpoint] = {op.definition_id: capability.operation_definition(op, base_url)
                                           for op in ops.values()}
            self._capabilities[endpoint] = capability.capability_statement(endpoint, ops.values(),
                                                                           base_url, published)
        self.starlette = Starlette(
            routes=[
                Route(self.base_path + "/{endpoint}/${operation}", _AsgiEndpoint(self.invoke),
                      methods=["POST", "GET"]),
                Route(self.base_path + "/{endpoint}/metadata", self.metadata, methods=["GET"]),
                Route(self.base_path + "/{endpoint}/OperationDefinition/{id}", self.definition,
                      methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.render_metrics, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        self.starlette.state.gateway = gateway
        self.starlette.state.keys = self.keys

    # --- operations -----------------------------------------------------------------------
    async def invoke(self, scope: dict, receive: Any, send: Any) -> None:
        """The operation request pipeline, as a plain ASGI endpoint: the hot path of every call
        skips Starlette's Request and Response objects."""
        started = time.perf_counter()
        endpoint = scope["path_params"]["endpoint"]
        name = scope["path_params"]["operation"]
        headers = _headers(scope)
        declared_format = codec.declared_format(headers.get("content-type"))
        out_format, media_type = codec.response_media_type(_format_parameter(scope), headers.get("accept"),
                                                           declared_format)
        via_get = scope["method"] in ("GET", "HEAD")
        op = self.operations.lookup(endpoint, name)
        client: Client | None = None
        items = 0
        try:
            if op is None:
                raise NotFound(f"operation ${name} is not provided at endpoint {endpoint!r}",
                               issue_code="not-supported")
            if via_get:
                if not op.allows_get(name):
                    raise FhirError(f"${name} changes state: use POST", status=405,
                                    issue_code="not-supported")
                body, resource = b"", _query_parameters(scope)
            else:
                body = await self._read_body(receive, headers.get("content-length"))
                in_format, charset = codec.request_format(headers.get("content-type"), body)
                if declared_format is None:  # no Content-Type: answer in the body's format
                    out_format, media_type = codec.response_media_type(
                        _format_parameter(scope), headers.get("accept"), in_format)
                resource = codec.decode(body, in_format, charset)
            client = self.keys.authenticate(self._presented_key(headers, resource))
            if not client.may_call(endpoint, op.name):
                raise NotAuthenticated(f"this API key may not call ${op.name} at {endpoint!r}")
            if resource["resourceType"] == "Bundle" and op.batch:
                status, answer, items = await self._invoke_batch(op, resource, client)
            else:
                inline = op.quick_read and not self._reads_block and len(body) <= INLINE_BODY
                status, answer, items = await self._invoke_one(op, resource, client, inline, name,
                                                               "GET" if via_get else "POST")
        except FhirError as error:
            status, answer = error.status, _outcome_of(error)
        except StorageError as error:
            log.error("storage failure", extra={"error": type(error).__name__, "detail": str(error)})
            status, answer = 503, fhir.operation_outcome("error", "transient", "storage is unavailable")
        except Exception:  # noqa: BLE001 - never a stack trace to the client
            log.exception("unhandled error", extra={"endpoint": endpoint, "operation": name})
            status, answer = 500, fhir.operation_outcome("fatal", "exception", "internal error")
        content = codec.encode(answer, out_format)
        elapsed = time.perf_counter() - started
        operation = op.name if op else "unknown"
        self.metrics.observe(endpoint, operation, status, elapsed, items)
        if log.isEnabledFor(logging.INFO):
            log.info("request", extra={"endpoint": endpoint, "operation": operation, "status": status,
                                       "ms": round(elapsed * 1000, 2), "items": items,
                                       "client": client.name if client else None})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()),
                                (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})

    async def _invoke_one(self, op: Operation, resource: dict, client: Client, inline: bool,
                          invoked_as: str, http_method: str) -> tuple[int, dict, int]:
        call = self._bind(op, resource, client, invoked_as, http_method)
        # A small read on an embedded store takes less time than the hop to a worker thread.
        result = op.handler(call) if inline else await run_in_threadpool(op.handler, call)
        items = _count_items(call)
        if isinstance(result, Result):
            return result.status, result.resource, items
        return 200, result, items

    async def _invoke_batch(self, op: Operation, bundle: dict, client: Client) -> tuple[int, dict, int]:
        """A `batch` Bundle of Parameters, each entry one call; entries fail independently."""
        if bundle.get("type") != "batch":
            raise InvalidRequest("only Bundles of type 'batch' are accepted")
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise InvalidRequest("Bundle.entry must be an array")
        calls: list[Call | FhirError] = []
        for index, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    raise InvalidRequest(f"entry {index + 1} has no resource")
                url = str((entry.get("request") or {}).get("url", "")).rsplit("/", 1)[-1].lstrip("$")
                if url and self.operations.lookup(op.endpoint, url) is not op:
                    raise InvalidRequest(f"entry {index + 1} asks for another operation")
                calls.append(self._bind(op, entry["resource"], client))
            except FhirError as error:
                calls.append(error)
        answers = await run_in_threadpool(_run_batch, op, calls)
        items = sum(_count_items(c) for c in calls if isinstance(c, Call))
        return 200, {"resourceType": "Bundle", "type": "batch-response", "entry": answers}, items

    def _bind(self, op: Operation, resource: dict, client: Client, invoked_as: str = "",
              http_method: str = "POST") -> Call:
        if resource.get("resourceType") != "Parameters":
            raise InvalidRequest(f"${op.name} expects a Parameters resource")
        args = bind(op.parameters, resource.get("parameter", []))
        for scope, value in scoped_values(op.parameters, args):
            if not client.may_use(scope, value):
                raise NotAuthenticated(f"this API key may not use {scope[:-1]} {value!r}")
        return Call(self.gateway, op, args, client, invoked_as or op.name, http_method)

    @staticmethod
    def _presented_key(headers: dict[str, str], resource: dict) -> str | None:
        """The API key from a header, else from an `apikey` body parameter. The parameter is
        removed either way, so that operations never see it."""
        from_body = _pop_body_key(resource)
        return headers.get("apikey") or headers.get("x-api-key") or from_body

    async def _read_body(self, receive: Any, declared: str | None) -> bytes:
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(f"the request body exceeds {self.max_body} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"the request body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _stored_keys(self) -> list:
        with self.gateway.repository.transaction() as tx:
            return [api_key_from_settings(k.as_settings()) for k in tx.get_api_keys()]

    # --- metadata -------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        statement = self._capabilities.get(request.path_params["endpoint"])
        if statement is None:
            return self._answer(request, 404, _outcome_of(NotFound("unknown endpoint")))
        elements = [e for value in request.query_params.getlist("_elements") for e in value.split(",")]
        if any(e.strip() for e in elements):
            statement = capability.elements_subset(statement, elements)
        return self._answer(request, 200, statement)

    async def definition(self, request: Request) -> Response:
        definitions = self._definitions.get(request.path_params["endpoint"], {})
        wanted = request.path_params["id"]
        found = definitions.get(wanted) or next(
            (d for d in definitions.values() if d["code"] == wanted), None)
        if found is None:
            return self._answer(request, 404, _outcome_of(NotFound(f"no OperationDefinition {wanted!r}")))
        return self._answer(request, 200, found)

    @staticmethod
    def _answer(request: Request, status: int, resource: dict) -> Response:
        fmt, media_type = codec.response_media_type(
            _format_parameter(request.scope), request.headers.get("accept"),
            codec.declared_format(request.headers.get("content-type")))
        return Response(codec.encode(resource, fmt), status_code=status, media_type=media_type)

    # --- operations of the service itself ----------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.gateway.repository.ping)
            facts: dict[str, Any] = {"storage": "ok"}
            for reported in self.gateway.plugins.hook.ttp_readiness(gateway=self.gateway):
                facts.update(reported or {})
        except Exception as error:  # noqa: BLE001 - not ready, whatever the reason
            body = {"status": "unavailable", "error": type(error).__name__}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json")
        return Response(orjson.dumps({"status": "ready", **facts}), media_type="application/json")

    async def render_metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.gateway.plugins.hook.ttp_shutdown(gateway=self.gateway)
            self.gateway.repository.close()


def _run_batch(op: Operation, calls: list) -> list[dict]:
    return [_batch_entry(op, call) for call in calls]


def _batch_entry(op: Operation, call: Call | FhirError) -> dict:
    try:
        if isinstance(call, FhirError):
            raise call
        result = op.handler(call)
    except FhirError as error:
        return {"response": {"status": str(error.status), "outcome": _outcome_of(error)}}
    except StorageError:
        return {"response": {"status": "503", "outcome": fhir.operation_outcome(
            "error", "transient", "storage is unavailable")}}
    except Exception:  # noqa: BLE001 - one entry's failure must not fail the batch
        log.exception("unhandled error in batch entry", extra={"operation": op.name})
        return {"response": {"status": "500", "outcome": fhir.operation_outcome(
            "fatal", "exception", "internal error")}}
    outcome = None
    if isinstance(result, Result):
        status, resource, outcome = result.status, result.resource, result.outcome
    else:
        status, resource = 200, result
    if outcome is None:
        outcome = fhir.operation_outcome("information", "informational", "Operation completed successfully.")
    return {"response": {"status": str(status), "outcome": outcome}, "resource": resource}


_WANTED_HEADERS = {b"accept", b"content-type", b"content-length", b"apikey", b"x-api-key"}


class _AsgiEndpoint:
    """Wraps a bound method so that Starlette routes to it as a raw ASGI app."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send)


def _headers(scope: dict) -> dict[str, str]:
    """The few request headers the pipeline reads, found in one pass (names are lower case in
    ASGI; a repeated header counts once, the first)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED_HEADERS and name.decode() not in found:
            found[name.decode()] = value.decode("latin-1")
    return found


def _format_parameter(scope: dict) -> str | None:
    query = scope["query_string"]
    if not query:
        return None
    values = parse_qs(query.decode("latin-1")).get("_format")
    return values[0] if values else None


def _query_parameters(scope: dict) -> dict:
    """A GET invocation's query string as the Parameters it stands for: each parameter a
    valueString (the binder reads integers and codes from strings); `_format` and the other
    control parameters are not the operation's."""
    query = scope["query_string"].decode("latin-1")
    return {"resourceType": "Parameters", "parameter": [
        {"name": name, "valueString": value} for name, value in parse_qsl(query, keep_blank_values=True)
        if not name.startswith("_")]}


def _pop_body_key(resource: dict) -> str | None:
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


def _outcome_of(error: FhirError) -> dict:
    severity = "error" if error.status < 500 else "fatal"
    return fhir.operation_outcome(severity, error.issue_code, error.diagnostics, error.details)


def _count_items(call: Call) -> int:
    """The size of a call, for metrics: the longest repeating parameter."""
    return max((len(v) for v in call.args.values() if isinstance(v, list)), default=1)


def build_gateway(config: Config, *, repository: Repository | None = None,
                  clock: Callable[[], Any] | None = None,
                  extra_plugins: tuple = ()) -> tuple[Gateway, OperationTable]:
    """Load plugins, check their configuration, open and migrate storage, collect operations
    and run the plugins' start-up."""
    plugins = plugin_manager(config.data["plugins"].get("disabled", []), extra_plugins)
    problems = config_problems(config, plugins)
    if problems:
        raise ConfigError("; ".join(problems))
    repository = repository or open_repository(config.storage_url)
    repository.migrate()
    gateway = Gateway(config=config, repository=repository, plugins=plugins, clock=clock or utc_now)
    operations = OperationTable.collect(plugins.hook.ttp_operations(gateway=gateway))
    plugins.hook.ttp_startup(gateway=gateway)
    return gateway, operations


def config_problems(config: Config, plugins: Any) -> list[str]:
    return [problem for found in plugins.hook.ttp_check_config(config=config) for problem in found or ()]


def create_app(config: Config | None = None, *, repository: Repository | None = None,
               clock: Callable[[], Any] | None = None, extra_plugins: tuple = ()) -> Starlette:
    """The ASGI app of a gateway. Every worker process calls this once."""
    gateway, operations = build_gateway(config or load_config(), repository=repository, clock=clock,
                                        extra_plugins=extra_plugins)
    return GatewayApp(gateway, operations).starlette


def app_from_environment() -> Starlette:
    """Factory for uvicorn workers: the configuration file comes from TTP_GATEWAY_CONFIG."""
    config = load_config()
    logging_settings = config.data["logging"]
    configure_logging(logging_settings.get("level", "INFO"), logging_settings.get("format", "json"),
                      logging_settings.get("audit_file", ""))
    log.info("worker starting", extra={"pid": os.getpid(), "config": config.source})
    app = create_app(config)
    # What start-up built lives as long as the worker; keeping it out of the cyclic garbage
    # collector's scans halves the time large batches spend in collections.
    gc.freeze()
    return app

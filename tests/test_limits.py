"""Every `[limits]` setting, at the ASGI boundary and, for what a client can do before the app
sees a request, at the HTTP protocol of a real server: beyond a limit the answer is the limit's
status with an OperationOutcome, before any work, and nothing is written."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from typing import Any, Iterator

import orjson
import pytest

from hostile.harness import GatewayUnderTest, Request, headers, hostile_config
from ttp_gateway.core import server as server_module
from ttp_gateway.core.app import create_app
from ttp_gateway.core.config import DEFAULTS, LIMIT_MEANINGS, Limits, load_config

GPAS = "/ttp-fhir/fhir/gpas"
DISPATCHER = "/ttp-fhir/fhir/dispatcher"
JSON = ("content-type", "application/fhir+json")


def parameters(*items: dict) -> bytes:
    return json.dumps({"resourceType": "Parameters", "parameter": list(items)}).encode()


def originals(count: int, prefix: str = "o") -> list[dict]:
    return [{"name": "original", "valueString": f"{prefix}-{index}"} for index in range(count)]


TARGET = {"name": "target", "valueString": "MIRACUM"}


def limited(storage_url: str, **limits: Any):
    config = hostile_config(storage_url)
    return config.with_overrides(limits={**config.data["limits"], **limits})


@pytest.fixture
def gateway_with(storage_url: str) -> Iterator[Any]:
    made: list[GatewayUnderTest] = []

    def make(**limits: Any) -> GatewayUnderTest:
        made.append(GatewayUnderTest(limited(storage_url, **limits)))
        return made[-1]

    yield make
    for under_test in made:
        under_test.close()


def post(gateway: GatewayUnderTest, path: str, body: bytes, key: str | None = "abcdef12345", **options: Any):
    return gateway.send(Request("POST", path, b"", headers(JSON, key=key), body, **options))


def outcome(response) -> dict:
    answer = orjson.loads(response.body)
    assert answer["resourceType"] == "OperationOutcome", answer
    return answer


def test_every_limit_is_documented_and_has_a_default() -> None:
    assert set(LIMIT_MEANINGS) == set(Limits.__dataclass_fields__) == set(DEFAULTS["limits"])
    lines = load_config(environ={}).limits.describe()
    assert len(lines) == len(LIMIT_MEANINGS) and all("(" in line and "=" in line for line in lines)


def test_body_size_with_credentials(gateway_with) -> None:
    gateway = gateway_with(max_body_bytes=64 * 1024, max_items=10_000)
    fits = parameters(TARGET, *originals(1000))
    assert 32 * 1024 < len(fits) < 64 * 1024
    assert post(gateway, f"{GPAS}/$pseudonymize", fits).status == 200
    too_big = parameters(TARGET, *originals(3000))
    before = gateway.snapshot()
    for chunks in (None, [too_big[i:i + 8192] for i in range(0, len(too_big), 8192)]):  # declared, streamed
        response = post(gateway, f"{GPAS}/$pseudonymizeAllowCreate", too_big if chunks is None else b"",
                        chunks=chunks)
        assert response.status == 413 and outcome(response)["issue"][0]["code"] == "too-costly"
    assert gateway.snapshot() == before


def test_unauthenticated_body_limit_until_the_key_is_known(gateway_with) -> None:
    gateway = gateway_with(max_body_bytes=64 * 1024, max_unauthenticated_body_bytes=4 * 1024, max_items=10_000)
    key = {"name": "apikey", "valueString": "abcdef12345"}
    assert post(gateway, f"{GPAS}/$pseudonymize", parameters(key, TARGET, *originals(5)), key=None).status == 200
    body = parameters(key, TARGET, *originals(200))
    assert 4 * 1024 < len(body) < 64 * 1024
    refused = post(gateway, f"{GPAS}/$pseudonymize", body, key=None)
    assert refused.status == 413 and "not yet known" in outcome(refused)["issue"][0]["diagnostics"]
    # The same body from a caller whose key is in a header: the larger limit.
    assert post(gateway, f"{GPAS}/$pseudonymize", body).status == 200
    # A wrong key in a header is refused before the body is read at all.
    assert post(gateway, f"{GPAS}/$pseudonymize", body, key="wrong", chunks=[body[:100], None]).status == 401


def test_a_slow_body_is_408(gateway_with) -> None:
    gateway = gateway_with(body_timeout_seconds=0.3)
    body = parameters(TARGET, *originals(3))
    started = time.monotonic()
    response = post(gateway, f"{GPAS}/$pseudonymizeAllowCreate", b"", chunks=[body[:20], None])
    assert response.status == 408 and outcome(response)["issue"][0]["code"] == "timeout"
    assert time.monotonic() - started < 5


def test_items_per_request(gateway_with) -> None:
    gateway = gateway_with(max_items=50)
    assert post(gateway, f"{GPAS}/$pseudonymize", parameters(TARGET, *originals(50))).status == 200
    before = gateway.snapshot()
    for path in (f"{GPAS}/$pseudonymize", f"{GPAS}/$pseudonymizeAllowCreate"):
        response = post(gateway, path, parameters(TARGET, *originals(51)))
        assert response.status == 413 and "original" in outcome(response)["issue"][0]["diagnostics"]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Parameters"}}] * 51}
    assert post(gateway, f"{DISPATCHER}/$pseudonymizePatient", orjson.dumps(bundle)).status == 413
    assert gateway.snapshot() == before


def _secondary(*counts: int) -> bytes:
    return parameters(*({"name": "original", "part": [
        {"name": "target", "valueString": "Datensatz-Ebene"}, {"name": "value", "valueString": f"v{index}"},
        {"name": "count", "valueInteger": count}]} for index, count in enumerate(counts)))


def _patient_contexts(*counts: int) -> bytes:
    return parameters({"name": "study", "valueString": "MyStudy"},
                      {"name": "patient", "resource": {"resourceType": "Patient", "identifier": [
                          {"system": "http://example.org/mrn", "value": "limits-1"}]}},
                      *({"name": "context", "part": [{"name": "target", "valueString": "MyStudy-Domain2"},
                                                     {"name": "count", "valueInteger": count}]} for count in counts))


def test_things_created_per_request(gateway_with) -> None:
    gateway = gateway_with(max_created=100)
    before = gateway.snapshot()
    for path, body in ((f"{GPAS}/$pseudonymize-secondary", _secondary(60, 41)),
                       (f"{DISPATCHER}/$pseudonymizePatient", _patient_contexts(60, 41))):
        response = post(gateway, path, body)
        assert response.status == 413 and "create" in outcome(response)["issue"][0]["diagnostics"]
    assert gateway.snapshot() == before
    assert post(gateway, f"{GPAS}/$pseudonymize-secondary", _secondary(60, 40)).status == 200


@pytest.mark.parametrize("path, body", [(f"{GPAS}/$pseudonymize-secondary", _secondary(10 ** 9)),
                                        (f"{DISPATCHER}/$pseudonymizePatient", _patient_contexts(10 ** 9)),
                                        (f"{GPAS}/$pseudonymize-secondary", _secondary(*[10_000] * 11))])
def test_a_count_of_a_billion_fails_fast_at_the_defaults(storage_url: str, path: str, body: bytes) -> None:
    config = hostile_config(storage_url).with_overrides(limits=DEFAULTS["limits"])
    gateway = GatewayUnderTest(config)
    try:
        post(gateway, f"{GPAS}/$pseudonymize", parameters(TARGET, *originals(1)))  # warm
        before = gateway.snapshot()
        tracemalloc.start()
        started = time.perf_counter()
        response = post(gateway, path, body)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert response.status == 413, response.body
        assert elapsed < 0.1 and peak < 2 * 1024 * 1024, (elapsed, peak)
        assert gateway.snapshot() == before
    finally:
        gateway.close()


def test_answer_size_writes_nothing(gateway_with) -> None:
    gateway = gateway_with(max_answer_bytes=4096)
    before = gateway.snapshot()
    response = post(gateway, f"{GPAS}/$pseudonymizeAllowCreate", parameters(TARGET, *originals(60, "new")))
    assert response.status == 413 and "answer" in outcome(response)["issue"][0]["diagnostics"]
    assert gateway.snapshot() == before
    assert post(gateway, f"{GPAS}/$pseudonymizeAllowCreate", parameters(TARGET, *originals(5, "new"))).status == 200
    assert gateway.snapshot() != before


def _nested_patient(levels: int) -> dict:
    extension: dict = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(levels):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    return {"resourceType": "Patient", "identifier": [{"system": "http://example.org/mrn", "value": "depth"}],
            "extension": [extension]}


def test_nesting_depth(gateway_with) -> None:
    gateway = gateway_with(max_depth=20)
    context = {"name": "context", "part": [{"name": "target", "valueString": "MyStudy-Domain1"},
                                           {"name": "count", "valueInteger": 0}]}
    study = {"name": "study", "valueString": "MyStudy"}
    shallow = post(gateway, f"{DISPATCHER}/$pseudonymizePatient",
                   parameters(study, {"name": "patient", "resource": _nested_patient(5)}, context))
    assert shallow.status == 200
    before = gateway.snapshot()
    for levels in (20, 150, 400):
        deep = post(gateway, f"{DISPATCHER}/$pseudonymizePatient",
                    parameters(study, {"name": "patient", "resource": _nested_patient(levels)}, context))
        assert deep.status in (400, 422) and "deeper" in outcome(deep)["issue"][0]["diagnostics"]
    assert gateway.snapshot() == before


def test_header_count_and_size_at_the_boundary(gateway_with) -> None:
    gateway = gateway_with(max_headers=10, max_header_bytes=2048)
    body = parameters(TARGET, *originals(1))
    many = Request("POST", f"{GPAS}/$pseudonymize", b"", headers(JSON, *[(f"x-{i}", "1") for i in range(10)]), body)
    assert gateway.send(many).status == 431
    large = Request("POST", f"{GPAS}/$pseudonymize", b"", headers(JSON, ("x-big", "b" * 2100)), body)
    assert gateway.send(large).status == 431
    assert outcome(gateway.send(large))["issue"][0]["code"] == "too-costly"
    fits = Request("POST", f"{GPAS}/$pseudonymize", b"", headers(JSON, *[(f"x-{i}", "1") for i in range(5)]), body)
    assert gateway.send(fits).status == 200


# --- the HTTP protocol of a real server ------------------------------------------------------------

PROTOCOL_LIMITS = {"max_headers": 20, "max_header_bytes": 4096, "body_timeout_seconds": 0.5, "max_connections": 4}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[int]:
    """A uvicorn server with the gateway's protocol, on a free port of the loopback address."""
    import uvicorn

    config = limited(f"sqlite:///{tmp_path_factory.mktemp('served') / 'gateway.db'}", **PROTOCOL_LIMITS)
    previous = server_module._limits
    server_module.use_limits(config.limits)
    app = create_app(config)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=server_module.BoundedHttpToolsProtocol,
                                           limit_concurrency=config.limits.max_connections, lifespan="off",
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        server_module._limits = previous
        app.gateway.repository.close()


def exchange(port: int, *pieces: bytes, pause: float = 0.0, wait: float = 5.0) -> tuple[int, bytes]:
    """Send pieces of a request (pausing between them), then read until the server closes or
    finishes one answer; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        for piece in pieces:
            try:
                connection.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server has answered and closed already
            if pause:
                time.sleep(pause)
        received = b""
        try:
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
                head, _, body = received.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request_bytes(extra_headers: bytes = b"", body: bytes | None = None, path: bytes = b"/ttp-fhir/fhir/gpas/$pseudonymize") -> bytes:
    body = parameters(TARGET, *originals(1)) if body is None else body
    return (b"POST " + path + b" HTTP/1.1\r\nhost: localhost\r\napikey: abcdef12345\r\n"
            b"content-type: application/fhir+json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"
            + extra_headers + b"\r\n" + body)


def fhir_refusal(body: bytes, code: str) -> None:
    answer = orjson.loads(body)
    assert answer["resourceType"] == "OperationOutcome" and answer["issue"][0]["code"] == code, answer


def test_a_good_request_over_the_real_server(served: int) -> None:
    status, body = exchange(served, request_bytes())
    assert status == 200 and orjson.loads(body)["resourceType"] == "Parameters"


def test_ten_thousand_headers_are_431(served: int) -> None:
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(10_000))
    status, body = exchange(served, request_bytes(many)[:200], request_bytes(many)[200:])
    assert status == 431
    fhir_refusal(body, "too-costly")


def test_eight_megabytes_of_headers_are_431(served: int) -> None:
    pieces = [request_bytes()[:60]] + [b"x-big: " + b"b" * 65536 + b"\r\n"] * 128
    status, body = exchange(served, *pieces)
    assert status == 431
    fhir_refusal(body, "too-costly")


def test_a_huge_request_line_is_431(served: int) -> None:
    status, body = exchange(served, request_bytes(path=b"/ttp-fhir/fhir/gpas/$pseudonymize?x=" + b"a" * 20_000))
    assert status == 431


def test_slow_headers_are_408(served: int) -> None:
    started = time.monotonic()
    status, body = exchange(served, b"POST /ttp-fhir/fhir/gpas/$pseudonymize HTTP/1.1\r\nhost: x\r\n", wait=5)
    assert status == 408 and time.monotonic() - started < 4
    fhir_refusal(body, "timeout")


def test_a_slow_body_over_the_real_server_is_408(served: int) -> None:
    whole = request_bytes()
    status, body = exchange(served, whole[:-10], wait=5)
    assert status == 408
    fhir_refusal(body, "timeout")


def test_malformed_http_is_a_fhir_400(served: int) -> None:
    status, body = exchange(served, b"POST /x HTTP/1.1\r\ncontent-length: abc\r\n\r\n")
    assert status == 400
    fhir_refusal(body, "structure")


def test_connections_beyond_the_limit_get_a_fhir_503(served: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", served)) for _ in range(PROTOCOL_LIMITS["max_connections"])]
    try:
        time.sleep(0.1)
        status, body = exchange(served, request_bytes())
        assert status == 503
        fhir_refusal(body, "transient")
    finally:
        for connection in idle:
            connection.close()
    time.sleep(0.2)
    assert exchange(served, request_bytes())[0] == 200


def test_large_bodies_are_decoded_off_the_event_loop(gateway_with, monkeypatch: pytest.MonkeyPatch) -> None:
    from ttp_gateway.core import codec

    gateway = gateway_with(max_items=10_000, max_answer_bytes=8 * 1024 * 1024)
    threads: list[str] = []
    decode = codec.decode

    def recording_decode(body: bytes, fmt: Any) -> dict:
        threads.append(threading.current_thread().name)
        return decode(body, fmt)

    monkeypatch.setattr(codec, "decode", recording_decode)
    for count in (2, 3000):
        assert post(gateway, f"{GPAS}/$pseudonymize", parameters(TARGET, *originals(count))).status == 200
    loop_thread = threading.current_thread().name  # the harness runs its event loop here
    assert threads[0] == loop_thread and threads[1] != loop_thread


def _second_answer(port: int, second: bytes) -> tuple[bytes, float]:
    """Send a whole request, read its answer, then send `second` on the same connection; what
    came back until the server closed, and how long that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request_bytes())
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            first += connection.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        connection.sendall(second)
        answer = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


def test_slow_headers_of_a_second_request_on_a_kept_connection_are_408(served: int) -> None:
    """The deadline is per request: a connection that was answered once cannot then dribble the
    next request's headers for ever."""
    second, seconds = _second_answer(served, b"POST /ttp-fhir/fhir/gpas/$pseudonymize HTTP/1.1\r\nhost: x\r\n")
    assert second.startswith(b"HTTP/1.1 408") and seconds < 4
    fhir_refusal(second.partition(b"\r\n\r\n")[2], "timeout")


def test_a_slow_body_of_a_second_request_on_a_kept_connection_is_408(served: int) -> None:
    second, seconds = _second_answer(served, request_bytes()[:-10])
    assert second.startswith(b"HTTP/1.1 408") and seconds < 4

"""Metrics that no request can forge: label values only from what the gateway declares, status
classes only, behind their own key where configured, and summed over all worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostile.harness import GatewayUnderTest, METRICS_KEY, Request, headers, hostile_config
from ttp_gateway.core.observability import Metrics

BASE = "/ttp-fhir/fhir"
STATUS_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"}
FORGERIES = ['$a"} 1\nttp_requests_total{endpoint="gpas",operation="pseudonymize",status="2xx"} 424242',
             "$pseudonymize\x00", "$" + "x" * 500, '$a\\"b', "$ünïcödé", "$Pseudonymize"]


@pytest.fixture
def gateway(storage_url: str):
    under_test = GatewayUnderTest(hostile_config(storage_url))
    yield under_test
    under_test.close()


def scrape(gateway: GatewayUnderTest, key: str | None = METRICS_KEY) -> tuple[int, str]:
    response = gateway.send(Request("GET", "/metrics", b"", headers(key=key)))
    return response.status, response.body.decode()


def series(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name.startswith("ttp_"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def declared(gateway: GatewayUnderTest) -> dict[str, set[str]]:
    return {endpoint: {*ops, "metadata", "OperationDefinition"}
            for endpoint, ops in gateway.app.operations.by_endpoint.items()}


def test_label_values_come_only_from_declarations(gateway: GatewayUnderTest) -> None:
    body = b'{"resourceType":"Parameters","parameter":[{"name":"target","valueString":"MIRACUM"},' \
           b'{"name":"original","valueString":"1001000000022"}]}'
    json_type = ("content-type", "application/fhir+json")
    gateway.send(Request("POST", f"{BASE}/gpas/$pseudonymize", b"", headers(json_type), body))
    gateway.send(Request("GET", f"{BASE}/gpas/metadata", b"", headers()))
    gateway.send(Request("POST", f"{BASE}/gpas/$pseudonymize", b"", headers(json_type), b"{"))
    _, first = scrape(gateway)
    for forged in FORGERIES:
        for endpoint in ("gpas", "dispatcher", "nowhere", 'x"}\n'):
            gateway.send(Request("POST", f"{BASE}/{endpoint}/{forged}", b"", headers(json_type), body))
        gateway.send(Request("GET", f"{BASE}/gpas/{forged[1:]}", b"", headers()))
    status, exposition = scrape(gateway)
    assert status == 200
    assert "424242" not in exposition and "ünïcödé" not in exposition
    for line in exposition.splitlines():
        assert line.startswith("#") or line.startswith("ttp_") or not line.strip() or line.startswith(
            ("process_", "python_")), line
    known = declared(gateway)
    found = series(exposition)
    for name, labels in found:
        values = dict(labels)
        endpoint, operation = values.get("endpoint"), values.get("operation")
        assert endpoint in known or endpoint == Metrics.OTHER, labels
        assert operation == Metrics.OTHER or operation in known.get(endpoint, set()), labels
        assert values.get("status", "2xx") in STATUS_CLASSES, labels
    # The forgeries added one series ("other") at most per metric and label set, never their own.
    before = {(name, tuple((k, v) for k, v in labels if k != "le")) for name, labels in series(first)}
    after = {(name, tuple((k, v) for k, v in labels if k != "le")) for name, labels in found}
    added = after - before
    assert all(dict(labels).get("operation") == Metrics.OTHER for _, labels in added), added
    assert found[("ttp_requests_total", (("endpoint", "gpas"), ("operation", "pseudonymize"),
                                         ("status", "2xx")))] == 1


def test_forged_names_add_no_series(gateway: GatewayUnderTest) -> None:
    json_type = ("content-type", "application/fhir+json")
    gateway.send(Request("POST", f"{BASE}/gpas/$unknownOperation", b"", headers(json_type), b"{}"))
    _, first = scrape(gateway)
    for index in range(50):
        gateway.send(Request("POST", f"{BASE}/gpas/$unknown{index}", b"", headers(json_type), b"{}"))
        gateway.send(Request("POST", f"{BASE}/endpoint{index}/$x", b"", headers(json_type), b"{}"))
    _, second = scrape(gateway)
    added = {(name, tuple((k, v) for k, v in labels if k != "le")) for name, labels in series(second)} - \
        {(name, tuple((k, v) for k, v in labels if k != "le")) for name, labels in series(first)}
    # 100 unknown names: only the series of endpoint "other" is new
    assert added and all(dict(labels)["endpoint"] == dict(labels)["operation"] == Metrics.OTHER
                         for _, labels in added), added
    assert len({labels for _, labels in added}) <= 2  # with and without the status label


def test_metrics_need_their_own_key(gateway: GatewayUnderTest) -> None:
    assert scrape(gateway, key=None)[0] == 401
    assert scrape(gateway, key="abcdef12345")[0] == 401  # an API key of the operations is not it
    assert scrape(gateway, key=METRICS_KEY + "x")[0] == 401
    assert scrape(gateway, key=METRICS_KEY)[0] == 200
    response = gateway.send(Request("GET", "/metrics", b"", headers(("x-api-key", METRICS_KEY), key=None)))
    assert response.status == 200


def test_metrics_without_a_key_when_none_is_configured(storage_url: str) -> None:
    config = hostile_config(storage_url).with_overrides(metrics={"key_sha256": "", "enabled": True, "port": 0})
    open_gateway = GatewayUnderTest(config)
    try:
        assert scrape(open_gateway, key=None)[0] == 200
    finally:
        open_gateway.close()
    for settings in ({"enabled": False, "port": 0}, {"enabled": True, "port": 9999}):  # off, or on its own port
        off = GatewayUnderTest(hostile_config(storage_url).with_overrides(metrics={**settings, "key_sha256": ""}))
        try:
            assert scrape(off, key=None)[0] == 404
        finally:
            off.close()


WORKER = textwrap.dedent("""
    import sys, time
    from ttp_gateway.core.observability import Metrics
    metrics = Metrics({"gpas": {"pseudonymize"}})
    for _ in range(int(sys.argv[1])):
        metrics.observe("gpas", "pseudonymize", 200, 0.002, items=3)
    metrics.observe("gpas", '"} forged', 404, 0.001)
    print("observed", flush=True)
    time.sleep(float(sys.argv[2]))  # a worker that goes idle after its requests
""")
SCRAPER = textwrap.dedent("""
    from ttp_gateway.core.observability import Metrics
    print(Metrics({"gpas": {"pseudonymize"}}).render()[0].decode())
""")


def test_workers_are_summed_in_multiprocess_mode(tmp_path: Path) -> None:
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(count), "4"], env=environment,
                                stdout=subprocess.PIPE, text=True) for count in (3, 5)]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "observed"
        time.sleep(Metrics.FLUSH_SECONDS + 0.5)  # whatever a worker buffers reaches the files by then
        exposition = subprocess.run([sys.executable, "-c", SCRAPER], env=environment, capture_output=True,
                                    text=True, check=True, timeout=60).stdout
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    found = series(exposition)
    assert found[("ttp_requests_total", (("endpoint", "gpas"), ("operation", "pseudonymize"), ("status", "2xx")))] == 8
    assert found[("ttp_requests_total", (("endpoint", "gpas"), ("operation", "other"), ("status", "4xx")))] == 2
    assert found[("ttp_items_total", (("endpoint", "gpas"), ("operation", "pseudonymize")))] == 24
    assert "forged" not in exposition

"""kill -9 under a load of single creates loses no pseudonym that a client received: an answer is
sent only after the (group) commit that holds its writes (SQLite and PostgreSQL)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from conftest import DEMO_CONFIG, ROOT, all_stores
from stores import transaction
from ttp_gateway.backends import open_repository


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("storage_url", ["sqlite", "postgresql"], indirect=True)
def test_kill_9_loses_no_answered_pseudonym(storage_url: str) -> None:
    port = _free_port()
    env = {**os.environ, "TTP_GATEWAY__STORAGE__URL": storage_url, "PORT": str(port),
           "TTP_GATEWAY__LOGGING__LEVEL": "WARNING"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "ttp-gateway"), "serve", "--config",
                               str(DEMO_CONFIG)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    answered: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        counter = 0
        while not stop.is_set():
            counter += 1
            original = f"crash-{number}-{counter}"
            body = orjson.dumps({"resourceType": "Parameters", "parameter": [
                {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": original}]})
            try:
                connection.request("POST", "/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate", body,
                                   {"Content-Type": "application/fhir+json", "apikey": "abcdef12345"})
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                return  # the server is gone (an answer cut off after its headers was never received)
            if response.status == 200:
                pseudonym = orjson.loads(data)["parameter"][0]["part"][2]["valueIdentifier"]["value"]
                with lock:
                    answered[original] = pseudonym

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/readyz")
                break
            except OSError:
                time.sleep(0.1)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        os.kill(server.pid, signal.SIGKILL)  # mid-load, without warning
        server.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        if server.poll() is None:
            server.kill()
    assert len(answered) > 100  # the load was real
    repository = open_repository(storage_url, all_stores())
    try:
        with transaction(repository) as tx:
            stored = tx.get_pseudonyms("MIRACUM", sorted(answered))
    finally:
        repository.close()
    assert stored == answered

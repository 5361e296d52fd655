"""The `ttp-gateway` command: configuration checks, admin commands, and serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from conftest import DEMO_CONFIG, GPAS, ROOT, client_for
from fhirshape import example, match
from ttp_gateway.core.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config(capsys, tmp_path) -> None:
    code, out, _ = run(capsys, "check-config", "--config", str(DEMO_CONFIG))
    assert code == 0 and "is valid" in out
    assert "[limits] max_body_bytes = 33554432: request body size (413)" in out  # the limits in force
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gpas.domains]]\nname = "X"\nalphabet = "AAB"\n')
    code, out, _ = run(capsys, "--config", str(bad), "check-config")
    assert code == 1 and "alphabet" in out
    code, _, err = run(capsys, "check-config", "--config", str(tmp_path / "missing.toml"))
    assert code == 1 and "does not exist" in err


@pytest.fixture
def on_storage(storage_url, monkeypatch):
    monkeypatch.setenv("TTP_GATEWAY__STORAGE__URL", storage_url)
    return storage_url


def test_domains_create_and_list(capsys, on_storage, demo_config) -> None:
    code, out, _ = run(capsys, "--config", str(DEMO_CONFIG), "domains", "create", "STUDY-X",
                       "--alphabet", "Numbers", "--generator", "Damm", "--length", "6", "--prefix", "X-",
                       "--multi-psn")
    assert code == 0, out
    code, out, _ = run(capsys, "--config", str(DEMO_CONFIG), "domains", "list")
    assert code == 0
    assert "STUDY-X" in out and "Damm" in out and "MIRACUM" in out and "multi-psn" in out
    code, _, err = run(capsys, "--config", str(DEMO_CONFIG), "domains", "create", "STUDY-X")
    assert code == 1 and "exists" in err
    code, _, err = run(capsys, "--config", str(DEMO_CONFIG), "domains", "create", "BAD", "--generator", "Damm",
                       "--alphabet", "Hex")
    assert code == 1 and "Damm" in err
    # The running service uses the new domain.
    with client_for(demo_config) as client:
        answer = client.post(f"{GPAS}/$pseudonymizeAllowCreate", json={"resourceType": "Parameters", "parameter": [
            {"name": "target", "valueString": "STUDY-X"}, {"name": "original", "valueString": "a"}]}).json()
        pseudonym = answer["parameter"][0]["part"][2]["valueIdentifier"]["value"]
        assert pseudonym.startswith("X-") and len(pseudonym) == 2 + 6 + 1 and pseudonym[2:].isdigit()


def test_keys_create_and_list(capsys, on_storage, demo_config) -> None:
    code, out, _ = run(capsys, "--config", str(DEMO_CONFIG), "keys", "create", "site-a",
                       "--domains", "MIRACUM", "--operations", "pseudonymize")
    assert code == 0
    secret = out.strip().splitlines()[-1]
    code, out, _ = run(capsys, "--config", str(DEMO_CONFIG), "keys", "list")
    assert "site-a" in out and "demo" in out and secret not in out
    code, _, err = run(capsys, "--config", str(DEMO_CONFIG), "keys", "create", "site-a")
    assert code == 1 and "exists" in err
    with client_for(demo_config, apikey=secret) as client:
        body = example("gpas", "Parameters-Parameters-Pseudonymize-request-example-1")
        assert client.post(f"{GPAS}/$pseudonymize", json=body).status_code == 200
        assert client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=body).status_code == 401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_the_guides_example(tmp_path: Path) -> None:
    """What `make run` does: the console script serves the demo configuration."""
    port = _free_port()
    env = {**os.environ, "TTP_GATEWAY__STORAGE__URL": f"sqlite:///{tmp_path / 'demo.db'}", "PORT": str(port)}
    script = Path(sys.executable).parent / "ttp-gateway"
    server = subprocess.Popen([str(script), "serve", "--config", str(DEMO_CONFIG)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None, "the server stopped"
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{base}{GPAS}/$pseudonymize",
            data=orjson.dumps(example("gpas", "Parameters-Parameters-Pseudonymize-request-example-1")),
            headers={"Content-Type": "application/fhir+json", "apikey": "abcdef12345"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = orjson.loads(response.read())
        match(answer, example("gpas", "Parameters-Parameters-Pseudonymize-response-example-1"), values=True)
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert "1001000000022" not in output and "abcdef12345" not in output

"""gICS figures: `python tests/gics/bench_gics.py [--consents N] [--seconds S]`.

1. `$allConsentsForDomain` pages of 100 over a domain of N consents (default 100,000): the time
   of a page at the start, the middle and the end, and the consents each page read.
2. `$isConsented` for one person in that domain: the median time of the operation's handler.
3. `$isConsented` requests per second on one uvicorn worker under wrk (32 connections),
   next to `/healthz` on the same server as the floor of the HTTP stack.

The store is the in-memory one of phase 1; the figures of 1 and 2 are the plugin's own cost
(building FHIR answers, computing states) on top of what a store's page costs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gics_helpers import DEMO, NOW, ROOT, demo_settings, gateway  # noqa: E402
from ttp_gateway.core.auth import Client  # noqa: E402
from ttp_gateway.core.gateway import Call  # noqa: E402
from ttp_gateway.core.operations import bind  # noqa: E402
from ttp_gateway.plugins.gics.model import Key, SignerId  # noqa: E402
from ttp_gateway.plugins.gics.operations import GicsOperations  # noqa: E402
from ttp_gateway.plugins.gics import resources as fr  # noqa: E402

OPERATIONS = {op.name: op for op in GicsOperations().declarations()}
PSEUDONYM = "https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym"
IS_CONSENTED = {"resourceType": "Parameters", "parameter": [
    {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": "dic_1H51T"}},
    {"name": "domain", "valueString": "MII"},
    {"name": "policy", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3",
                                       "code": "2.16.840.1.113883.3.1937.777.24.5.3.6"}},
    {"name": "version", "valueString": "1.1"}]}


def fill(service, count: int) -> None:
    """`count` consents of the MII form 1.6.d, one person each, in batches."""
    catalogue, template = service.template("MII", Key("Patienteneinwilligung MII", "1.6.d"))
    answers = {m.module: fr.ConsentStatus.ACCEPTED for m in template.modules}
    batch = []
    for index in range(count):
        signer = SignerId("Pseudonym", f"bench_{index:07d}")
        signed_at = NOW.replace(year=2020 + index % 5, microsecond=index % 1000)
        batch.append(service.signed_consent(catalogue, template, [signer], signed_at, answers, {
            "questionnaireResponse": fr.form_response(template, answers, signed_at, service.zone),
            "patient": fr.patient_of([signer])}))
        if len(batch) == 5000 or index == count - 1:
            with service.store.transaction(write=True) as unit:
                unit.add_consents(batch)
            batch = []


def call(gateway_, operation: str, body: dict, query: dict | None = None) -> Call:
    op = OPERATIONS[operation]
    made = Call(gateway_, op, bind(op.parameters, body["parameter"]), Client(name="bench"))
    made.query = query or {}  # type: ignore[attr-defined]
    return made


def in_process(consents: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder, gateway(Path(folder), demo_settings()) as client:
        gw = client.app.state.gateway
        service = gw.service("gics")
        started = time.perf_counter()
        fill(service, consents)
        rows.append({"benchmark": f"recording {consents:,} consents (memory store)",
                     "seconds": round(time.perf_counter() - started, 1)})
        body = {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"}]}
        total = consents + 6
        for offset in (0, total // 2, total - 100):
            times = []
            for _ in range(5):
                began = time.perf_counter()
                page = OPERATIONS["allConsentsForDomain"].handler(
                    call(gw, "allConsentsForDomain", body, {"_count": "100", "_offset": str(offset)}))
                encoded = orjson.dumps(page)
                times.append(time.perf_counter() - began)
            assert page["total"] == total and len(page["entry"]) == 100
            rows.append({"benchmark": f"$allConsentsForDomain page of 100 at offset {offset:,} of {total:,}",
                         "median_ms": round(statistics.median(times) * 1000, 1),
                         "answer_kib": len(encoded) // 1024})
        times = []
        for _ in range(2000):
            began = time.perf_counter()
            answer = OPERATIONS["isConsented"].handler(call(gw, "isConsented", IS_CONSENTED))
            times.append(time.perf_counter() - began)
        assert answer["parameter"][0]["valueBoolean"] is True
        rows.append({"benchmark": f"$isConsented handler, one person, domain of {total:,}",
                     "median_ms": round(statistics.median(times) * 1000, 3),
                     "p99_ms": round(sorted(times)[int(len(times) * 0.99)] * 1000, 3)})
    return rows


def wrk_rate(url: str, body: bytes | None, seconds: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "post.lua"
        lines = ['wrk.headers["apikey"] = "abcdef12345"']
        if body is not None:
            lines += ['wrk.method = "POST"', f"wrk.body = [[{body.decode()}]]",
                      'wrk.headers["Content-Type"] = "application/fhir+json"']
        script.write_text("\n".join(lines) + "\n")
        output = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), url],
                                capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise RuntimeError("wrk saw errors: " + output)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def over_http(seconds: int) -> list[dict]:
    if shutil.which("wrk") is None:
        print("wrk is not installed: the HTTP figure is skipped")
        return []
    sys.path.insert(0, str(ROOT))
    from bench.servers import free_port, wait_until_ready

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "gateway.toml"
        config.write_text((ROOT / "config" / "demo.toml").read_text(encoding="utf-8") + "\n" + DEMO.read_text(
            encoding="utf-8"), encoding="utf-8")
        port = free_port()
        env = {**os.environ, "TTP_GATEWAY__STORAGE__URL": f"sqlite:///{folder}/bench.db", "PORT": str(port),
               "TTP_GATEWAY__SERVER__WORKERS": "1", "TTP_GATEWAY__LOGGING__LEVEL": "WARNING"}
        server = subprocess.Popen([str(Path(sys.executable).parent / "ttp-gateway"), "serve", "--config", str(config)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(f"{base}/readyz")
            url = f"{base}/ttp-fhir/fhir/gics/$isConsented"
            wrk_rate(url, orjson.dumps(IS_CONSENTED), 2)
            rate = wrk_rate(url, orjson.dumps(IS_CONSENTED), seconds)
            floor = wrk_rate(f"{base}/healthz", None, seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return [{"benchmark": "$isConsented, one worker, wrk 32 connections", "requests_per_second": round(rate),
             "healthz_per_second": round(floor), "ratio_to_healthz": round(rate / floor, 2)}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consents", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    for row in in_process(args.consents) + over_http(args.seconds):
        print(", ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()

"""(g) gICS on SQLite, each figure beside a floor measured in the same run:

1. `$isConsented` for one person: requests per second on one worker under wrk, beside a bare
   Starlette endpoint that makes the same lookup in the same SQLite file and answers the same
   Parameters (`bare_app` below: no authentication, binding, catalogue, states or thread hop).
2. `$allConsentsForDomain` pages of 100 over a domain of 100,000 stored consents (`--quick`:
   10,000), over HTTP: the median time of a page at the start, the middle and the end, beside
   the store's own reads of the same page in-process (count, page, the page's persons). A page
   that loaded the domain would grow with the offset; the end's time is printed against the
   start's.
3. Bulk checks: one batch Bundle of 1,000 `$isConsented` entries (`--quick`: 200), checks per
   second in one round trip, beside the same checks sent one request at a time over one
   connection.
"""

from __future__ import annotations

import http.client
import os
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from .servers import DEMO_CONFIG, gateway, uvicorn_app
from .wrk import measure, post_script

PSEUDONYM = "https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym"
MDAT_ERHEBEN = {"system": "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3", "code": "2.16.840.1.113883.3.1937.777.24.5.3.6"}
BASE = "/ttp-fhir/fhir/gics"
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "apikey": "abcdef12345"}
PAGE = 100


def is_consented_body(person: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": person}},
        {"name": "domain", "valueString": "MII"}, {"name": "policy", "valueCoding": MDAT_ERHEBEN},
        {"name": "version", "valueString": "1.1"}]}


def person(index: int) -> str:
    return f"bench_{index:07d}"


# --- the store, filled ----------------------------------------------------------------------------

def fill(storage_url: str, count: int) -> float:
    """The demo configuration's store with `count` further consents of the MII form 1.6.d in
    domain MII, one person each, recorded in batches; the seconds that took."""
    from ttp_gateway.core.app import build_gateway
    from ttp_gateway.core.config import load_config
    from ttp_gateway.plugins.gics import resources as fr
    from ttp_gateway.plugins.gics.model import ConsentStatus, Key, SignerId
    from ttp_gateway.plugins.gics.service import GICS
    from ttp_gateway.plugins.gics.store import CONSENTS

    config = load_config(DEMO_CONFIG, environ={}).with_overrides(storage={"url": storage_url})
    gw, _ = build_gateway(config)
    service = gw.service(GICS)
    with gw.repository.read() as unit:
        catalogue, template = service.template(unit, "MII", Key("Patienteneinwilligung MII", "1.6.d"))
    answers = {m.module: ConsentStatus.ACCEPTED if i % 2 == 0 else ConsentStatus.DECLINED
               for i, m in enumerate(template.modules)}
    started = time.perf_counter()
    batch = []
    for index in range(count):
        signer = SignerId("Pseudonym", person(index))
        signed_at = datetime(2021 + index % 5, 1 + index % 12, 1 + index % 28, 9, index % 60, tzinfo=service.zone)
        batch.append(service.signed_consent(catalogue, template, [signer], signed_at, answers, {
            "questionnaireResponse": fr.form_response(template, answers, signed_at, service.zone),
            "patient": fr.patient_of([signer])}))
        if len(batch) == 5000 or index == count - 1:
            gw.repository.write(lambda unit, part=batch: unit[CONSENTS].add_consents(part))
            batch = []
    elapsed = time.perf_counter() - started
    gw.repository.checkpoint()
    gw.repository.close()
    return elapsed


def store_page_ms(storage_url: str, offset: int, repeats: int) -> float:
    """The store's reads of one page in-process, as the operation makes them (the floor)."""
    from ttp_gateway.backends import open_repository
    from ttp_gateway.backends.base import StoreRegistry
    from ttp_gateway.core.plugins import load_plugins
    from ttp_gateway.plugins.gics.store import CONSENTS

    registry = StoreRegistry()
    load_plugins().hook.ttp_stores(stores=registry)
    repository = open_repository(storage_url, list(registry))
    times = []
    for _ in range(repeats + 1):
        began = time.perf_counter()
        with repository.read() as unit:
            store = unit[CONSENTS]
            store.count_consents("MII")
            page = store.consents_page("MII", offset=offset, limit=PAGE)
            store.consents_of_persons("MII", sorted({s for c in page for s in c.signer_ids}))
        times.append(time.perf_counter() - began)
    repository.close()
    assert len(page) == PAGE
    return statistics.median(times[1:]) * 1000


# --- HTTP -----------------------------------------------------------------------------------------

class Connection:
    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self._connection = http.client.HTTPConnection(url.hostname, url.port, timeout=300)

    def post(self, path: str, body: dict) -> tuple[float, dict]:
        payload = orjson.dumps(body)
        began = time.perf_counter()
        self._connection.request("POST", path, body=payload, headers=HEADERS)
        response = self._connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"the gateway answered {response.status}: {answer[:300]!r}")
        return elapsed, orjson.loads(answer)

    def close(self) -> None:
        self._connection.close()


def wrk_rate(wrk: str, url: str, body: bytes, seconds: int, connections: int = 32) -> float:
    return measure(wrk, url, post_script(body, HEADERS), seconds, connections)["per_second"]


def run(quick: bool = False) -> list[dict]:
    from .wrk import ensure_wrk

    consents = 10_000 if quick else 100_000
    seconds = 3 if quick else 10
    bulk = 200 if quick else 1000
    repeats = 5
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "gics.db"
        storage_url = f"sqlite:///{database}"
        took = fill(storage_url, consents)
        total = consents + 6  # and the demo's own MII consents
        print(f"  recorded {consents:,} consents in {took:.0f} s ({consents / took:,.0f}/s); "
              f"database {database.stat().st_size / 2 ** 20:,.0f} MiB", flush=True)
        with gateway(storage_url) as base:
            connection = Connection(base)
            # 2. pages at the start, the middle and the end
            body = {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"}]}
            served = {}
            for offset in (0, total // 2, total - PAGE):
                times = []
                for _ in range(repeats + 1):
                    elapsed, page = connection.post(f"{BASE}/$allConsentsForDomain?_count={PAGE}&_offset={offset}", body)
                    times.append(elapsed)
                if page["total"] != total or len(page["entry"]) != PAGE:
                    raise RuntimeError("a page of the wrong size")
                served[offset] = statistics.median(times[1:]) * 1000
            # 3. bulk checks in one round trip, beside one request per check
            people = [person(i * (consents // bulk)) for i in range(bulk)]
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": is_consented_body(p), "request": {"method": "POST", "url": "$isConsented"}}
                for p in people]}
            connection.post(f"{BASE}/$isConsented", bundle)  # warm-up
            bulk_times = []
            for _ in range(3):
                elapsed, answer = connection.post(f"{BASE}/$isConsented", bundle)
                if [e["response"]["status"] for e in answer["entry"]] != ["200"] * bulk:
                    raise RuntimeError("a bulk check failed")
                bulk_times.append(elapsed)
            began = time.perf_counter()
            for p in people:
                connection.post(f"{BASE}/$isConsented", is_consented_body(p))
            one_by_one = time.perf_counter() - began
            connection.close()
            # 1. $isConsented under wrk
            wrk = ensure_wrk()
            url = base + f"{BASE}/$isConsented"
            single_body = orjson.dumps(is_consented_body(person(consents // 3)))
            rate = None
            if wrk is not None:
                wrk_rate(wrk, url, single_body, 2)
                rate = wrk_rate(wrk, url, single_body, seconds)
        for offset, ms in served.items():
            floor = store_page_ms(storage_url, offset, repeats)
            rows.append({"benchmark": f"$allConsentsForDomain page of {PAGE} at offset {offset:,} of {total:,}, "
                                      "HTTP, SQLite",
                         "median_ms": round(ms, 1), "store_reads_ms": round(floor, 1),
                         "ratio_to_store": round(ms / floor, 1)})
        rows.append({"benchmark": "$allConsentsForDomain: the end's page against the start's",
                     "ratio_end_to_start": round(served[total - PAGE] / served[0], 2)})
        best = min(bulk_times)
        rows.append({"benchmark": f"bulk $isConsented: {bulk:,} checks in one batch Bundle, HTTP, SQLite",
                     "checks_per_second": round(bulk / best), "one_request_each_per_second": round(bulk / one_by_one),
                     "ratio_to_one_by_one": round(one_by_one / best, 1)})
        if rate is None:
            print("  wrk is not installed (Debian package 'wrk'): the requests-per-second figure is skipped")
        else:
            with uvicorn_app("bench.gics:bare_app", {"BENCH_SQLITE_PATH": str(database)}) as bare_base:
                bare_url = bare_base + f"{BASE}/$isConsented"
                wrk_rate(wrk, bare_url, single_body, 2)  # type: ignore[arg-type]
                bare = wrk_rate(wrk, bare_url, single_body, seconds)  # type: ignore[arg-type]
            rows.insert(0, {"benchmark": f"$isConsented, one person, domain of {total:,}, 1 worker, SQLite, "
                                         "wrk 32 connections",
                            "requests_per_second": round(rate), "bare_starlette_per_second": round(bare),
                            "ratio_to_bare": round(rate / bare, 2)})
    return rows


# --- the floor of the $isConsented figure ----------------------------------------------------------

def _bare_app():
    """The same lookup as the store's for one person, in the same file, and the same answer."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    database = sqlite3.connect(os.environ.get("BENCH_SQLITE_PATH", ":memory:"), check_same_thread=False)
    permitting = {"ACCEPTED", "ACCEPTED_OPT_OUT"}
    # The policy the benchmark asks about, as the catalogue resolves its MII code.
    wanted = ("MDAT_erheben", "1.1")

    async def is_consented(request: Request) -> Response:
        parameters = orjson.loads(await request.body())["parameter"]
        identifier = next(p["valueIdentifier"] for p in parameters if p["name"] == "personIdentifier")
        domain = next(p["valueString"] for p in parameters if p["name"] == "domain")
        rows = database.execute(
            "SELECT signed_at, policies FROM gics_consent WHERE seq IN (SELECT seq FROM gics_signer_id "
            "WHERE domain = ? AND id_type = ? AND id_value = ?) ORDER BY signed_at",
            (domain, identifier["system"].rsplit("/", 1)[1], identifier["value"])).fetchall()
        now = int(time.time() * 1000)
        consented = False
        for _, policies in rows:  # the newest consent's word counts
            for name, version, status, expires in orjson.loads(policies):
                if (name, version) == wanted:
                    consented = status in permitting and (expires is None or expires > now)
        answer = {"resourceType": "Parameters", "parameter": [{"name": "consented", "valueBoolean": consented}]}
        return Response(orjson.dumps(answer), media_type="application/fhir+json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route(f"{BASE}/$isConsented", is_consented, methods=["POST"]),
                             Route("/healthz", healthz)])


def __getattr__(name: str):
    # uvicorn imports `bench.gics:bare_app`; the benchmark itself never builds it.
    if name == "bare_app":
        return _bare_app()
    raise AttributeError(name)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)

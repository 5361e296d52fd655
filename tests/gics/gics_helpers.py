"""What the gICS tests share: the guide's examples, a gateway on the demo consent data, and the
comparison of FHIR resources in shape.

Shape is what a client relies on: the element paths, extension URLs, profiles, and the system
and code of every Coding. Ids, timestamps, texts and references are not compared.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
from starlette.testclient import TestClient

from ttp_gateway.core.app import create_app
from ttp_gateway.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "examples" / "gics"
DEMO_CONFIG = ROOT / "config" / "demo.toml"
BASE = "/ttp-fhir/fhir/gics"
KEY = "abcdef12345"
NOW = datetime(2025, 6, 2, 10, 0, tzinfo=timezone.utc)
PSEUDONYM = "https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym"
# Keys besides the demo key: one scoped to the MII consent domain, one to num.
SCOPED_KEYS = [{"name": "mii-only", "key": "mii-only-key", "consent-domains": ["MII"]},
               {"name": "num-only", "key": "num-only-key", "consent-domains": ["num"]}]


# Tests of what does not depend on the backend run on SQLite only; the others, with the suite's
# `storage_url`, on every backend.
SQLITE_ONLY = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def demo_settings(*, persons: Iterable[str] | None = None, extra_consents: Iterable[dict] = ()) -> dict:
    """The demo's [gics] section; with `persons`, only the consents of those signer ids."""
    settings = tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))["gics"]
    if persons is not None:
        wanted = set(persons)
        settings["consents"] = [c for c in settings["consents"] if wanted & set(c["signer_ids"])]
    settings["consents"] = [*settings.get("consents", []), *extra_consents]
    return settings


def demo_config(storage_url: str, gics: dict | None = None, **overrides: Any):
    """The demo configuration with this [gics] section on this store, and the scoped keys. The
    other endpoints' demo data are left out: these tests do not use them, and seeding them would
    cost every test (the whole demo configuration is served in the suite's other tests)."""
    config = load_config(DEMO_CONFIG, environ={})
    auth = {**config.data["auth"], "api_keys": [*config.data["auth"]["api_keys"], *SCOPED_KEYS]}
    return config.with_overrides(storage={"url": storage_url}, auth=auth,
                                 gics=gics if gics is not None else demo_settings(),
                                 gpas={"domains": [], "pairs": []},
                                 dispatcher={"studies": [], "persons": [], "clearings": []}, **overrides)


def gateway(storage_url: str, gics: dict | None = None, clock: Callable[[], datetime] = lambda: NOW,
            **overrides: Any) -> TestClient:
    """An HTTP client of a gateway on the demo configuration with this [gics] section; use it
    in a `with` block, which closes the store at its end."""
    app = create_app(demo_config(storage_url, gics, **overrides), clock=clock)
    return TestClient(app, headers={"apikey": KEY})


def post(client: TestClient, operation: str, body: dict, **kwargs: Any):
    return client.post(f"{BASE}/${operation}", json=body, **kwargs)


def person(pid: str) -> dict:
    return {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": pid}}


def count_consents(client: TestClient, domain: str = "MII") -> int:
    """How many consents the domain holds, asked over HTTP."""
    answer = client.post(f"{BASE}/$allConsentsForDomain?_count=0", json={
        "resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": domain}]})
    assert answer.status_code == 200, answer.text
    return answer.json()["total"]


# --- shape ----------------------------------------------------------------------------------

IGNORED = {"id", "lastUpdated", "fullUrl", "display", "text", "reference", "div"}


def shape(resource: Any, ignore: Iterable[str] = ()) -> Any:
    """A resource's shape: for a Bundle, the sorted shapes of its entries (Bundles inside
    recursively); for any other resource, the set of its element paths with the system and
    code of every Coding and the value of every profile and URL. `ignore` names paths
    (prefixes) to leave out, e.g. "Consent.meta.extension"."""
    skip = tuple(ignore)
    if resource.get("resourceType") == "Bundle":
        entries = [shape(e["resource"], skip) for e in resource.get("entry", []) if "resource" in e
                   and not _skipped(e["resource"]["resourceType"], skip)]
        return ("Bundle", resource.get("type"), tuple(sorted(entries, key=repr)))
    found: set = set()
    _walk(resource, resource["resourceType"], found, skip)
    # A sorted tuple, not a set: its repr is canonical, so that a Bundle's entries sort alike.
    return (resource["resourceType"], tuple(sorted(found, key=repr)))


def _skipped(path: str, skip: tuple[str, ...]) -> bool:
    return any(path == s or path.startswith(s + ".") or path.startswith(s + "[") for s in skip)


def _walk(value: Any, path: str, found: set, skip: tuple[str, ...]) -> None:
    if _skipped(path, skip):
        return
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
            found.add((path, "coding", value["system"], value["code"]))
        for key, item in value.items():
            if key in IGNORED or key == "url" and path.endswith("]"):
                continue
            where = f"{path}.{key}"
            if key == "extension" and isinstance(item, list):
                for extension in item:
                    _walk(extension, f"{where}[{extension.get('url', '?')}]", found, skip)
                continue
            _walk(item, where, found, skip)
    elif isinstance(value, list):
        for item in value:
            _walk(item, path, found, skip)
    elif path.endswith((".profile", ".system", ".url", ".type", ".status", ".relation")):
        found.add((path, value))
    else:
        found.add((path,))


def difference(got: Any, want: Any) -> str:
    """Where two shapes differ, readably."""
    if isinstance(got, tuple) and len(got) == 2 and got[0] != "Bundle":
        return (f"{got[0]}: missing {sorted(set(want[1]) - set(got[1]), key=repr)}\n"
                f"  unexpected {sorted(set(got[1]) - set(want[1]), key=repr)}")
    if isinstance(got, tuple) and got[:1] == ("Bundle",) and isinstance(want, tuple) and want[:1] == ("Bundle",):
        extra = [g for g in got[2] if g not in want[2]]
        missing = [w for w in want[2] if w not in got[2]]
        if len(extra) == len(missing) == 1:
            return difference(extra[0], missing[0])
        if len(got[2]) != len(want[2]):
            return f"{len(got[2])} entries, expected {len(want[2])}"
        return "\n".join(difference(g, w) for g, w in zip(sorted(extra, key=repr), sorted(missing, key=repr)))
    return f"answer: {got}\nexpected: {want}"


def assert_shape(answer: dict, expected: dict, ignore: Iterable[str] = ()) -> None:
    got, want = shape(answer, ignore), shape(expected, ignore)
    assert got == want, difference(got, want)

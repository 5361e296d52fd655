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

from starlette.testclient import TestClient

from ttp_gateway.core.app import create_app
from ttp_gateway.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "examples" / "gics"
DEMO = ROOT / "plugins" / "gics" / "demo.toml"
BASE = "/ttp-fhir/fhir/gics"
KEY = "abcdef12345"
NOW = datetime(2025, 6, 2, 10, 0, tzinfo=timezone.utc)


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def demo_settings(*, persons: Iterable[str] | None = None, extra_consents: Iterable[dict] = ()) -> dict:
    """The demo's [gics] section; with `persons`, only the consents of those signer ids."""
    settings = tomllib.loads(DEMO.read_text(encoding="utf-8"))["gics"]
    if persons is not None:
        wanted = set(persons)
        settings["consents"] = [c for c in settings["consents"] if wanted & set(c["signer_ids"])]
    settings["consents"] = [*settings.get("consents", []), *extra_consents]
    return settings


def gateway(tmp_path: Path, gics: dict | None = None, clock: Callable[[], datetime] = lambda: NOW,
            **overrides: Any) -> TestClient:
    """An HTTP client of a gateway on the demo configuration with this [gics] section."""
    config = load_config(ROOT / "config" / "demo.toml", environ={}).with_overrides(
        storage={"url": f"sqlite:///{tmp_path / 'gateway.db'}"}, gics=gics if gics is not None else demo_settings(),
        **overrides)
    return TestClient(create_app(config, clock=clock), headers={"apikey": KEY})


def post(client: TestClient, operation: str, body: dict, **kwargs: Any):
    return client.post(f"{BASE}/${operation}", json=body, **kwargs)


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

"""The layers the architecture promises, checked on every import in the source:

- the core imports no plugin (it knows FHIR plumbing, never pseudonyms or Bloom filters);
- the backends import neither plugins nor the core (they know units of work and stores only);
- a plugin reaches another plugin only through that plugin's public API module (`api`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "ttp_gateway.core", "backends": "ttp_gateway.backends", "plugins": "ttp_gateway.plugins"}


def _imports(path: Path, package: str) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _modules(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        relative = path.relative_to(ROOT / folder).with_suffix("")
        parts = [PACKAGES[folder], *relative.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        yield path, ".".join(parts), package


def test_the_core_imports_no_plugin() -> None:
    offending = [(str(path.relative_to(ROOT)), name) for path, _, package in _modules("core")
                 for name in _imports(path, package) if name.startswith("ttp_gateway.plugins")]
    assert offending == []


def test_the_backends_import_neither_plugins_nor_the_core() -> None:
    offending = [(str(path.relative_to(ROOT)), name) for path, _, package in _modules("backends")
                 for name in _imports(path, package)
                 if name.startswith(("ttp_gateway.plugins", "ttp_gateway.core"))]
    assert offending == []


def test_plugins_meet_only_through_public_apis() -> None:
    offending = []
    for path, module, package in _modules("plugins"):
        own = module.split(".")[2] if module.count(".") >= 2 else ""
        for name in _imports(path, package):
            parts = name.split(".")
            if name.startswith("ttp_gateway.plugins.") and len(parts) > 2 and parts[2] != own:
                if len(parts) < 4 or parts[3] != "api":
                    offending.append((str(path.relative_to(ROOT)), name))
    assert offending == []


def test_the_checks_see_the_modules() -> None:
    assert len(list(_modules("core"))) > 10 and len(list(_modules("plugins"))) > 10
    assert any("ttp_gateway.plugins.gpas.api" in _imports(path, package)
               for path, _, package in _modules("plugins"))

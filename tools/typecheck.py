"""Type-check the installed package as its users import it: `ttp_gateway.core` and the public
plugin API strictly, the rest of the package as far as they reach.

The repository keeps core/, backends/ and plugins/ at the top level and installs them as
`ttp_gateway.*`; mypy sees that layout through a folder of links (`.typecheck/ttp_gateway`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".typecheck"
PACKAGES = ("core", "backends", "plugins")
# Strict: the core, and the modules a plugin author imports.
STRICT = ["ttp_gateway.core", "ttp_gateway.backends.base", "ttp_gateway.backends.sql",
          "ttp_gateway.backends.mongo", "ttp_gateway.plugins.gpas.api", "ttp_gateway.plugins.dispatcher.api"]


def main() -> int:
    package = STAGE / "ttp_gateway"
    package.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = package / name
        if not link.is_symlink():
            if link.exists():
                link.unlink()
            link.symlink_to(ROOT / name, target_is_directory=True)
    arguments = [sys.executable, "-m", "mypy", "--strict", "--namespace-packages", "--explicit-package-bases",
                 "--follow-imports=silent", "--cache-dir", str(STAGE / "cache")]
    for module in STRICT:
        arguments += ["-p", module]
    result = subprocess.run(arguments, cwd=STAGE, env={**os.environ, "MYPYPATH": str(STAGE)})
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

"""wrk, the load generator of the request-rate benchmarks: installed from Debian's packages where
missing, driven by a Lua script, and read back as rate, latency percentiles and errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# A request that takes longer than this counts as an error (wrk's default is 2 s, which a bare
# SQLite endpoint's lock waits can exceed; a figure with errors is not reported at all).
TIMEOUT_SECONDS = 10

_SUMMARY = (
    "done = function(summary, latency, requests)\n"
    '  io.write(string.format("errors %d %d %d\\n", summary.errors.status, summary.errors.connect,'
    " summary.errors.timeout))\n"
    '  io.write(string.format("p50 %f p99 %f\\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))\n'
    "end\n")


def ensure_wrk() -> str | None:
    """wrk from Debian's packages, installed when missing and we may install."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    for command in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "wrk"]):
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def post_script(body: bytes, headers: dict[str, str]) -> str:
    """A script that posts the same body on every request."""
    return ('wrk.method = "POST"\n' f"wrk.body = [[{body.decode()}]]\n"
            + "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items()))


def measure(wrk: str, url: str, script: str, seconds: int, connections: int = 32) -> dict:
    """Requests per second and the p50 and p99 latency (ms) of `script` against `url`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "load.lua"
        path.write_text(script + _SUMMARY)
        output = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={TIMEOUT_SECONDS}s",
                                 "-s", str(path), url], capture_output=True, text=True, check=True).stdout
    errors = [int(n) for n in _found(r"errors (\d+) (\d+) (\d+)", output).groups()]
    if any(errors):
        raise RuntimeError(f"wrk saw errors against {url} (status, connect, timeout): {errors}")
    p50, p99 = (float(x) for x in _found(r"p50 ([\d.]+) p99 ([\d.]+)", output).groups())
    return {"per_second": float(_found(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}


def _found(pattern: str, output: str) -> re.Match[str]:
    match = re.search(pattern, output)
    if match is None:
        raise RuntimeError(f"wrk's output has no {pattern!r}: {output[-500:]!r}")
    return match

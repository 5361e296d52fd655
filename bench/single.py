"""(b) Single-original `$pseudonymize` requests per second on one worker under wrk, beside a bare
Starlette endpoint doing the same lookup on the same SQLite file (`bench/bare_app.py`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import orjson

from .servers import gateway, uvicorn_app

PATH = "/ttp-fhir/fhir/gpas/$pseudonymize"
BODY = orjson.dumps({"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]})


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


def requests_per_second(wrk: str, url: str, seconds: int, connections: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = [[{BODY.decode()}]]\n"
            'wrk.headers["Content-Type"] = "application/fhir+json"\n'
            'wrk.headers["apikey"] = "abcdef12345"\n'
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("errors %d %d %d\\n", summary.errors.status, summary.errors.connect,'
            " summary.errors.timeout))\n"
            "end\n")
        output = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                                capture_output=True, text=True, check=True).stdout
    errors = [int(n) for n in re.search(r"errors (\d+) (\d+) (\d+)", output).groups()]
    if any(errors):
        raise RuntimeError(f"wrk saw errors (status, connect, timeout): {errors}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def run(seconds: int = 10, connections: int = 32) -> list[dict]:
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed (Debian package 'wrk'): single-request figures skipped", flush=True)
        return []
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "single.db"
        with gateway(f"sqlite:///{database}") as base:
            requests_per_second(wrk, base + PATH, 2, connections)  # warm-up
            served = requests_per_second(wrk, base + PATH, seconds, connections)
        with uvicorn_app("bench.bare_app:app", {"BENCH_SQLITE_PATH": str(database)}) as base:
            requests_per_second(wrk, base + PATH, 2, connections)
            bare = requests_per_second(wrk, base + PATH, seconds, connections)
    return [{"benchmark": "single-original $pseudonymize, 1 worker, SQLite",
             "requests_per_second": round(served), "bare_starlette_per_second": round(bare),
             "ratio_to_bare": round(served / bare, 2)}]


if __name__ == "__main__":
    for row in run():
        print(row)

"""Starting and stopping the services a benchmark measures, each in its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.toml"
POSTGRES_ADMIN_URL = os.environ.get("TTP_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


@contextmanager
def gateway(storage_url: str, workers: int = 1) -> Iterator[str]:
    """The gateway on the demo configuration and the given store; yields its base URL."""
    port = free_port()
    env = {**os.environ, "TTP_GATEWAY__STORAGE__URL": storage_url, "PORT": str(port),
           "TTP_GATEWAY__SERVER__WORKERS": str(workers), "TTP_GATEWAY__LOGGING__LEVEL": "WARNING"}
    script = Path(sys.executable).parent / "ttp-gateway"
    process = subprocess.Popen([str(script), "serve", "--config", str(DEMO_CONFIG)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{base}/readyz")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def uvicorn_app(app: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Any ASGI app `module:attribute` under uvicorn with the gateway's settings (one worker)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{base}/healthz")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means no server to measure
        return False


def analyze(storage_url: str) -> None:
    """Bring a PostgreSQL database's planner statistics up to date, as autovacuum does within a
    minute of a large change: a database filled seconds ago is measured as it runs from then on,
    not in the minute in which its planner still thinks its tables are empty."""
    if storage_url.startswith("postgres"):
        import psycopg

        with psycopg.connect(storage_url, autocommit=True) as connection:
            connection.execute("ANALYZE")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one measurement; dropped afterwards."""
    import psycopg

    name = f"ttp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

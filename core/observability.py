"""Structured logs, the audit trail and Prometheus metrics.

Log lines carry request facts (operation, status, duration, API key name, item counts), never
request bodies: originals, IDAT and Bloom filters have no field to go into. Audit records go to
the `ttp_gateway.audit` logger, which `[logging] audit_file` can route to a file of its own.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import orjson

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Only the type and where it happened: exception texts can quote request values.
            entry["error"] = record.exc_info[0].__name__
            entry["where"] = _frames(record.exc_info[2])
        return orjson.dumps(entry, default=str).decode()


def _frames(tb: Any) -> list[str]:
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}:{code.co_name}")
        tb = tb.tb_next
    return frames[-8:]


def configure_logging(level: str = "INFO", fmt: str = "json", audit_file: str = "") -> None:
    """Log lines (JSON by default) to stderr; audit records to `audit_file` when set, else with
    the log lines. Lines are written as they happen: a writer thread would cost a request more
    in contention for the interpreter than the write itself."""
    stream = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        stream.setFormatter(JsonFormatter())
    else:
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [stream]
    root.setLevel(level.upper())
    audit = logging.getLogger("ttp_gateway.audit")
    audit.setLevel(logging.INFO)
    if audit_file:
        file_handler = logging.FileHandler(audit_file, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        audit.handlers[:] = [file_handler]
        audit.propagate = False
    else:
        audit.handlers[:] = []
        audit.propagate = True
    # Uvicorn's access log prints query strings; our own request log replaces it.
    logging.getLogger("uvicorn.access").disabled = True


class Metrics:
    """Request counters and latency histograms in the Prometheus text format (per process)."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._items: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str], list[float]] = {}

    def observe(self, endpoint: str, operation: str, status: int, seconds: float, items: int = 0) -> None:
        with self._lock:
            self._requests[(endpoint, operation, status)] += 1
            self._items[(endpoint, operation)] += items
            buckets = self._latency.setdefault((endpoint, operation), [0] * (len(self.BUCKETS) + 2))
            for index, bound in enumerate(self.BUCKETS):
                if seconds <= bound:
                    buckets[index] += 1
            buckets[-2] += 1          # +Inf
            buckets[-1] += seconds    # sum

    def render(self) -> str:
        lines = ["# HELP ttp_requests_total Operation requests by endpoint, operation and status.",
                 "# TYPE ttp_requests_total counter"]
        with self._lock:
            for (endpoint, operation, status), count in sorted(self._requests.items()):
                lines.append(f'ttp_requests_total{{endpoint="{endpoint}",operation="{operation}",'
                             f'status="{status}"}} {count}')
            lines += ["# HELP ttp_items_total Items (originals, pseudonyms, Bloom filters) processed.",
                      "# TYPE ttp_items_total counter"]
            for (endpoint, operation), count in sorted(self._items.items()):
                lines.append(f'ttp_items_total{{endpoint="{endpoint}",operation="{operation}"}} {count}')
            lines += ["# HELP ttp_request_seconds Time to answer an operation request.",
                      "# TYPE ttp_request_seconds histogram"]
            for (endpoint, operation), buckets in sorted(self._latency.items()):
                labels = f'endpoint="{endpoint}",operation="{operation}"'
                for bound, count in zip(self.BUCKETS, buckets):
                    lines.append(f'ttp_request_seconds_bucket{{{labels},le="{bound}"}} {count}')
                lines.append(f'ttp_request_seconds_bucket{{{labels},le="+Inf"}} {buckets[-2]}')
                lines.append(f"ttp_request_seconds_count{{{labels}}} {buckets[-2]}")
                lines.append(f"ttp_request_seconds_sum{{{labels}}} {buckets[-1]:.6f}")
        return "\n".join(lines) + "\n"

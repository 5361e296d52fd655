"""Structured logs, the audit trail and Prometheus metrics.

Log lines carry request facts (operation, status, duration, API key name, item counts), never
request bodies: originals, IDAT and Bloom filters have no field to go into. Audit records go to
the `ttp_gateway.audit` logger, which `[logging] audit_file` can route to a file of its own.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import sys
import threading
import time
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


class AuditTrail:
    """Append-only JSON lines: who (API key name) did what to which domain or study, when.

    Until `configure_logging` gives it a file (or stderr), records go to the
    `ttp_gateway.audit` logger. A configured trail writes to a descriptor opened for appending,
    whole lines even when several workers share the file. A record made on a worker thread is
    written at once. Records made on the event loop (requests answered there) are written
    together once the loop has run the requests that are ready, with one `os.write`, and every
    such request awaits that write (`written`) before its answer goes out: no answer leaves
    before its record, and a process that dies loses no record of an answer it gave."""

    def __init__(self) -> None:
        self._descriptor: int | None = None
        self._owned = False
        self._second = -1
        self._stamp = ""
        self._group = threading.local()  # per thread, so per event loop: `_Group`

    def write_to(self, path: str | None) -> None:
        """Write to `path` (appending), or to stderr when None."""
        group: _Group | None = getattr(self._group, "now", None)
        if group is not None and group.lines and self._descriptor is not None:  # made for the old place
            _write_all(self._descriptor, b"".join(group.lines))
            group.lines.clear()
        if self._owned and self._descriptor is not None:
            os.close(self._descriptor)
        if path:
            self._descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True
        else:
            self._descriptor, self._owned = 2, False  # the process's stderr, whatever sys.stderr is

    def record(self, action: str, facts: dict[str, Any]) -> None:
        if self._descriptor is None:
            logging.getLogger("ttp_gateway.audit").info(action, extra={"audit": facts})
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date is the costly part; once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {"time": f"{self._stamp}.{int(now % 1 * 1000):03d}Z",
                 "level": "info", "logger": "ttp_gateway.audit", "message": action, "audit": facts}
        line = orjson.dumps(entry, default=str) + b"\n"
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: written now
            _write_all(self._descriptor, line)
            return
        group: _Group | None = getattr(self._group, "now", None)
        if group is None or group.written.get_loop() is not loop:
            if group is not None and group.lines:  # left by a loop of this thread that has ended
                _write_all(self._descriptor, b"".join(group.lines))
            group = self._group.now = _Group(loop.create_future())
            loop.call_soon(self._write_group, group)
        group.lines.append(line)

    def written(self) -> "asyncio.Future[None] | None":
        """The write that the records made on this thread's event loop are waiting for, or None:
        a request awaits it before its answer goes out."""
        group: _Group | None = getattr(self._group, "now", None)
        return group.written if group is not None else None

    def _write_group(self, group: "_Group") -> None:
        if getattr(self._group, "now", None) is group:
            self._group.now = None
        lines, group.lines = group.lines, []
        try:
            if lines and self._descriptor is not None:  # (a trail reset meanwhile logs instead)
                _write_all(self._descriptor, b"".join(lines))
        except OSError as error:
            group.written.set_exception(error)
        else:
            group.written.set_result(None)


class _Group:
    """Audit records made on one event loop, written together."""

    __slots__ = ("lines", "written")

    def __init__(self, written: "asyncio.Future[None]") -> None:
        self.lines: list[bytes] = []
        self.written = written


def _write_all(descriptor: int, data: bytes) -> None:
    while data:
        data = data[os.write(descriptor, data):]


audit_trail = AuditTrail()


def configure_logging(level: str = "INFO", fmt: str = "json", audit_file: str = "") -> None:
    """Log lines (JSON by default) to stderr; audit records to `audit_file` when set, else to
    stderr as well. Lines are written as they happen: a writer thread would cost a request more
    in contention for the interpreter than the write itself."""
    stream = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        stream.setFormatter(JsonFormatter())
    else:
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [stream]
    root.setLevel(level.upper())
    audit_trail.write_to(audit_file or None)
    # Uvicorn's access log prints query strings; our own request log replaces it.
    logging.getLogger("uvicorn.access").disabled = True


class Metrics:
    """Request counters and latency histograms (prometheus_client), aggregated over all worker
    processes when PROMETHEUS_MULTIPROC_DIR is set (`ttp-gateway serve` sets it).

    Label values come only from what the gateway declares: endpoint and operation names of the
    loaded plugins (anything else counts as "other") and status classes ("2xx", "4xx", "5xx"), so
    no request can add series or text of its own to the exposition.

    A request only adds to plain counters of its process; they are handed to prometheus_client
    (whose multiprocess values check the process id and take a lock on every change) at most
    every `FLUSH_SECONDS` (a timer flushes what an idle worker still holds) and before every
    exposition."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    OTHER = "other"
    FLUSH_SECONDS = 1.0

    def __init__(self, operations: dict[str, set[str]]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        # `*_created` series carry nothing an operator needs
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self._known = {endpoint: frozenset(names) for endpoint, names in operations.items()}
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter("ttp_requests", "Requests by endpoint, operation and status class.",
                                 ["endpoint", "operation", "status"], registry=self.registry)
        self._items = Counter("ttp_items", "Items (originals, pseudonyms, Bloom filters) processed.",
                              ["endpoint", "operation"], registry=self.registry)
        self._latency = Histogram("ttp_request_seconds", "Time to answer a request.", ["endpoint", "operation"],
                                  buckets=self.BUCKETS, registry=self.registry)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._item_counts: dict[tuple[str, str], int] = {}
        self._times: dict[tuple[str, str], list[float]] = {}
        self._flushed = time.monotonic()
        self._flush_timer: threading.Timer | None = None

    def labels(self, endpoint: str, operation: str) -> tuple[str, str]:
        known = self._known.get(endpoint)
        if known is None:
            return self.OTHER, self.OTHER
        return endpoint, operation if operation in known else self.OTHER

    def observe(self, endpoint: str, operation: str, status: int, seconds: float, items: int = 0) -> None:
        endpoint, operation = self.labels(endpoint, operation)
        status_class = f"{status // 100}xx" if 100 <= status < 600 else self.OTHER
        key = (endpoint, operation)
        with self._lock:
            counted = (endpoint, operation, status_class)
            self._counts[counted] = self._counts.get(counted, 0) + 1
            if items:
                self._item_counts[key] = self._item_counts.get(key, 0) + items
            times = self._times.get(key)
            if times is None:
                times = self._times[key] = []
            times.append(seconds)
            due = self._flush_timer is None
            if due:  # an idle worker's last requests must reach the other workers' expositions too
                self._flush_timer = threading.Timer(self.FLUSH_SECONDS, self.flush)
                self._flush_timer.daemon = True
                self._flush_timer.start()
        if time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Hand what this process counted since the last flush to prometheus_client."""
        with self._lock:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            counts, self._counts = self._counts, {}
            item_counts, self._item_counts = self._item_counts, {}
            times, self._times = self._times, {}
            self._flushed = time.monotonic()
        for labels, count in counts.items():
            self._requests.labels(*labels).inc(count)
        for pair, count in item_counts.items():
            self._items.labels(*pair).inc(count)
        for pair, seconds in times.items():
            _observe_all(self._latency.labels(*pair), seconds, self.BUCKETS)

    def render(self) -> tuple[bytes, str]:
        """The exposition (of every worker when in multiprocess mode) and its media type."""
        self.flush()
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _observe_all(histogram: Any, values: list[float], bounds: tuple[float, ...]) -> None:
    """`histogram.observe(v)` for every value, one change per bucket: prometheus_client has no
    bulk call, and a change costs a lock and a process check in multiprocess mode."""
    buckets, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(bounds) + 1:
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(buckets)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(buckets, counts):
        if count:
            bucket.inc(count)
    total.inc(sum(values))


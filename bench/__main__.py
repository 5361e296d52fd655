"""`python -m bench [batch|mii|single|creates|matcher|quality ...] [--quick]`: run benchmarks, print each figure next
to its floor and target, and write the rows to bench/results/latest.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

TARGETS = {
    "batch": "≥ 40,000 new pseudonyms/s on SQLite and ≤ 2× its floor",
    "mii": "a Bundle of 10,000 new MII $pseudonymize entries on SQLite ≤ 1.5× the gPAS batch of 10,000",
    "single": "≥ 2,500 requests/s and ≥ 0.6× the bare endpoint",
    "creates": "single-original creates with group commit: SQLite ≥ 5,000/s with p99 ≤ 50 ms, "
               "PostgreSQL ≥ 3,000/s, and ≥ 3× the same gateway without group commit",
    "matcher": "index ≥ 1.5× faster than anonlink's kernel and within 1.2× of bare faiss at 1,000,000 filters; "
               "10,000,000: ≤ 100 ms a query, ≤ 1.1× raw filter bytes; "
               "one $requestPsnFromBfWorkflow against 1,000,000 filters: ≤ 12 ms median",
    "quality": "F1 ≥ 0.995 over record pairs after clearing with ≤ 10% of records in clearing, single and batched",
    "gics": "$isConsented ≥ 2,000 requests/s on one worker; a page of 100 of 100,000 consents ≤ 150 ms, "
            "the end's ≤ 1.5× the start's; bulk checks ≥ 3× one request each",
}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("only", nargs="*", metavar="NAME", help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    unknown = set(args.only) - set(TARGETS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    chosen = args.only or list(TARGETS)
    print(f"machine: {machine()}", flush=True)
    rows = []
    for name in chosen:
        print(f"\n== {name}: target {TARGETS[name]}", flush=True)
        started = time.perf_counter()
        if name == "batch":
            from . import batch

            found = batch.run(repeats=3 if args.quick else 7, batch=2000 if args.quick else batch.BATCH)
        elif name == "mii":
            from . import mii

            found = mii.run(repeats=3 if args.quick else 7, batch=2000 if args.quick else mii.BATCH)
        elif name == "single":
            from . import single

            found = single.run(seconds=3 if args.quick else 10)
        elif name == "creates":
            from . import creates

            found = creates.run(seconds=3 if args.quick else 10)
        elif name == "quality":
            from . import quality

            found = quality.run(quick=args.quick)
        elif name == "gics":
            from . import gics

            found = gics.run(quick=args.quick)
        else:
            from . import linkage, matcher

            found = matcher.run(**({"sizes": [100_000], "repeats": 5} if args.quick else {}))
            found += linkage.run(**({"n": 100_000, "repeats": 5} if args.quick else {}))
        for row in found:
            print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        rows += [{"group": name, **row} for row in found]
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

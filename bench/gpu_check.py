"""Check faiss-gpu's binary search against the CPU on random balanced Bloom filters, and time both.

Self-contained (numpy and faiss only), for a machine with faiss-gpu and a GPU:

    python bench/gpu_check.py [--rows 1000000] [--queries 1024] [--k 40]

The gateway's `index_device = "gpu"` runs its k-nearest pass on a `GpuIndexBinaryFlat` made by
`faiss.index_binary_cpu_to_gpu`, and everything else on the CPU; this checks that that pass
gives the CPU's answer: the same Hamming distances for every query, and the same rows wherever
the distance is below the k-th (rows tied at the k-th distance may be any of the tied ones, on
either side). Exit status 0 when they agree, 1 when not, 2 without a usable GPU. `--with-index`
also compares the gateway's FilterIndex on "gpu" and "cpu" (needs the gateway installed);
`--dry-run` compares two CPU indexes, to try the script where no GPU is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import faiss
import numpy as np

LENGTH_BITS = 1600


def balanced_filters(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Record bits and their complement, bytes in one fixed shuffled order: L of 2L bits set."""
    order = rng.permutation(LENGTH_BITS // 8)
    out = np.empty((rows, LENGTH_BITS // 8), np.uint8)
    for start in range(0, rows, 65_536):
        records = rng.integers(0, 256, (min(65_536, rows - start), LENGTH_BITS // 16), dtype=np.uint8)
        out[start : start + records.shape[0]] = np.concatenate((records, ~records), axis=1)[:, order]
    return out


def noisy_copies(stored: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Queries near stored rows: a byte of each copy replaced by its complement every ~10 bytes."""
    queries = stored[rng.choice(stored.shape[0], count, replace=False)].copy()
    flip = rng.random(queries.shape) < 0.1
    queries[flip] = ~queries[flip]
    return queries


def agree(cpu: tuple[np.ndarray, np.ndarray], gpu: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """Differences between two k-nearest answers (distances, rows), tolerating ties at the k-th."""
    problems = []
    (cpu_d, cpu_i), (gpu_d, gpu_i) = cpu, gpu
    for q in range(cpu_d.shape[0]):
        if not np.array_equal(np.sort(cpu_d[q]), np.sort(gpu_d[q])):
            problems.append(f"query {q}: distances differ")
            continue
        kth = cpu_d[q].max()
        if set(cpu_i[q][cpu_d[q] < kth].tolist()) != set(gpu_i[q][gpu_d[q] < kth].tolist()):
            problems.append(f"query {q}: rows nearer than the k-th differ")
    return problems


def timed(call, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--with-index", action="store_true", help="also compare the gateway's FilterIndex")
    parser.add_argument("--dry-run", action="store_true", help="a second CPU index stands in for the GPU")
    args = parser.parse_args()

    if not args.dry_run and not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        print("no GPU: this faiss has no GPU support or sees no GPU (install faiss-gpu)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(7)
    stored = balanced_filters(args.rows, rng)
    queries = noisy_copies(stored, args.queries, rng)

    cpu = faiss.IndexBinaryFlat(LENGTH_BITS)
    cpu.add(stored)
    if args.dry_run:
        gpu = faiss.IndexBinaryFlat(LENGTH_BITS)
        gpu.add(stored)
    else:
        resources = faiss.StandardGpuResources()
        gpu = faiss.index_binary_cpu_to_gpu(resources, 0, faiss.IndexBinaryFlat(LENGTH_BITS))
        gpu.add(stored)
    print(f"{args.rows:,} balanced {LENGTH_BITS}-bit filters, {args.queries} queries, k={args.k}, "
          f"{faiss.omp_get_max_threads()} CPU threads, {'CPU stand-in' if args.dry_run else 'GPU 0'}")

    problems = agree(cpu.search(queries, args.k), gpu.search(queries, args.k))
    gpu.search(queries[:1], args.k)  # warm-up
    for batch in (1, 16, args.queries):
        part = queries[:batch]
        cpu_s = timed(lambda: cpu.search(part, args.k), args.repeats)
        gpu_s = timed(lambda: gpu.search(part, args.k), args.repeats)
        print(f"  {batch:>5} queries at once: CPU {cpu_s / batch * 1e3:8.3f} ms a query, "
              f"GPU {gpu_s / batch * 1e3:8.3f} ms a query, GPU {cpu_s / gpu_s:6.1f}x faster")

    if args.with_index:
        from ttp_gateway.plugins.dispatcher.matcher import FilterIndex

        keys = np.arange(args.rows, dtype=np.int64) * 3
        on_cpu = FilterIndex(LENGTH_BITS)
        on_device = FilterIndex(LENGTH_BITS) if args.dry_run else FilterIndex(LENGTH_BITS, device="gpu")
        for index in (on_cpu, on_device):
            index.load(keys, stored)
            index.remove(keys[:1000:7])  # removal moves rows: the GPU copy is rebuilt
            index.upsert(keys[1:3].tolist(), [stored[5].tobytes(), stored[6].tobytes()])
        query_bytes = [row.tobytes() for row in queries[:64]]
        for min_score, limit in ((0.0, 12), (0.78, 12), (0.0, 200)):
            expected = on_cpu.search_many(query_bytes, min_score, limit)
            if on_device.search_many(query_bytes, min_score, limit) != expected:
                problems.append(f"FilterIndex results differ (min_score {min_score}, limit {limit})")
        single = query_bytes[0]
        cpu_s = timed(lambda: on_cpu.search(single, 0.78, 12), args.repeats)
        gpu_s = timed(lambda: on_device.search(single, 0.78, 12), args.repeats)
        print(f"  FilterIndex, one query: CPU {cpu_s * 1e3:.2f} ms, device {gpu_s * 1e3:.2f} ms")

    for problem in problems[:20]:
        print("MISMATCH", problem)
    print("results agree" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""The worker threads that run handlers and large decodes off the event loop.

A plain `concurrent.futures` pool driven by `loop.run_in_executor`: a hop costs a queue put and
a future, less than half of what anyio's thread runner spends on cancel scopes and limiters for
the same hop, which at thousands of requests a second is a measurable share of a request."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")
WORKERS = 40  # as many as requests that may wait for the store at once, per process

_pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="ttp-request")


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on a worker thread, awaited."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool, functools.partial(function, *args))

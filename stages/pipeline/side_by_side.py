"""Independent jobs side by side on the CPU, one single-threaded job per core.

The models here are small: a ConvNet-3 student trains only ~1.6x faster on 2 threads than on 1 (the
ops are too small to split well), so two students at once, one thread each, finish sooner than two in a
row on both threads. A job then always runs on one thread, so its bytes do not depend on the core count.
Threads, not processes: torch releases the GIL inside its kernels, and the jobs share the loaded data.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterable, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def jobs_at_once(device: torch.device, jobs: int) -> int:
    """How many jobs to run together: one per torch thread on the CPU (DDPIPE_THREADS), one on a GPU."""
    return 1 if device.type != "cpu" else max(1, min(jobs, torch.get_num_threads()))


def map_side_by_side(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """`[fn(item) for item in items]`, up to `workers` at a time, each on one torch thread; the first error is
    raised once running jobs stop. Workers are daemon threads, so a SIGTERM's SystemExit (raised in the main
    thread, which waits in join) ends the process without waiting for them; their progress is in resume
    state written atomically."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    results: list = [None] * len(items)
    failures: list[BaseException] = []
    queue, lock = iter(enumerate(items)), threading.Lock()

    def work() -> None:
        while not failures:
            with lock:
                job = next(queue, None)
            if job is None:
                return
            try:
                results[job[0]] = fn(job[1])
            except BaseException as e:  # handed to the main thread
                failures.append(e)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, len(items)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        torch.set_num_threads(before)
    if failures:
        raise failures[0]
    return results

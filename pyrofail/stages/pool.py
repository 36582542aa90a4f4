"""Run independent tasks of a stage in this process or in a local process pool.

A task is a picklable ``(function, arguments)`` pair whose function is a module-level pure
function of its arguments and of files in the run folder; the pool gives each worker process
``threads`` torch threads, so that ``workers`` processes share the cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

__all__ = ["run_tasks", "threads_per_worker"]


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _call(task):
    fn, args, threads = task
    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def run_tasks(fn: Callable, tasks: Sequence[tuple], workers: int = 1, progress=None) -> list:
    """``[fn(*args) for args in tasks]``, ``workers`` at a time in spawned processes when
    ``workers > 1``; ``progress(i, total)`` after each task finishes (in order)."""
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        out = []
        for i, args in enumerate(tasks):
            out.append(fn(*args))
            if progress is not None:
                progress(i + 1, len(tasks))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = threads_per_worker(workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_call, (fn, args, threads)) for args in tasks]
        out = []
        for i, fut in enumerate(futures):
            out.append(fut.result())
            if progress is not None:
                progress(i + 1, len(tasks))
    return out

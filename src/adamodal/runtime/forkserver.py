"""The fork server that worker processes are forked from, started early when a run will want
workers: its import of torch (about 2 s) then overlaps the main process's own imports and data
preparation instead of delaying the first phase that waits for the workers.

Nothing here imports torch, so the CLI can call it before it imports anything heavy.
"""

from __future__ import annotations

import multiprocessing as mp

#: what the fork server imports once for all workers: torch, what torch imports on the first
#: optimizer, and scipy.stats, imported on the first AUC (each costs seconds per process)
PRELOAD = ["torch", "torch._dynamo", "scipy.stats", "adamodal.runtime.pool"]


def context() -> mp.context.BaseContext:
    """The ``forkserver`` context with :data:`PRELOAD` (``spawn`` where there is no fork
    server; plain ``fork`` of a process that has used torch is unsafe)."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # effective when this process's fork server starts
        return ctx
    return mp.get_context("spawn")


def start_early() -> bool:
    """Start the fork server now, in the background (it imports :data:`PRELOAD` on its own);
    False where there is none. Idempotent: a running fork server is left as it is."""
    if "forkserver" not in mp.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    context()
    try:
        forkserver.ensure_running()
    except OSError:  # cannot start one here: the pool starts it (and reports why) when needed
        return False
    return True

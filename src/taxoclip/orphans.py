"""No orphans: every worker process taxoclip starts dies with the process that started it.

Why: a run killed with SIGKILL (or by the OOM killer) cannot tell its workers to stop. Workers
blocked on a queue no one writes to then live on, adopted by init: issue 14 found four
`data build` workers alive 54 minutes after their build was killed. torch's DataLoader workers
poll their parent only every 5 s. On Linux the kernel can do it at once (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import os
import signal
import sys

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel SIGKILL this process when its parent dies. Call first thing in a worker.
    (`sig` another signal, for a child that must clean up: a Ray driver stops its instance on SIGTERM.)
    `parent` is the pid that forked it, read before the fork: if it is already gone, exit now
    (None when a fork server started the worker: it then dies with the fork server, which dies
    with the run). Linux only, a no-op elsewhere. The kernel watches the *thread* that forked the
    worker: start workers from a thread that lives as long as they do (taxoclip uses the main one)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # the parent died before the call
        os._exit(1)

"""Processes the builder starts die with it, also when it is killed with SIGKILL (OOM killer, a job's time limit).

Without this, DataLoader workers of a killed builder live on: each blocks in its result queue's finalizer (its feeder
thread cannot write to a pipe nobody reads), holding its memory, indefinitely. A worker calls `die_with_parent`
first thing; Linux then sends it SIGKILL when the parent dies. The kernel sends that signal when the *thread* that
forked the child exits: DataLoader workers are forked by the thread that iterates the loader, the builder's main
thread, which lives as long as the builder. Elsewhere a watcher thread polls the parent instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0  # the watcher's period where prctl is not available


def die_with_parent(parent: int) -> None:
    """In a child process: end when `parent` (its parent's pid, taken before the fork) dies, also by SIGKILL."""
    if not _parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed: nobody would send it now
        os._exit(1)


def _parent_death_signal(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, signum) through libc; False where that is not available (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)

"""Resident memory: of this process, and of the app in a process of its own, read once freed heap is handed back."""

# Why a process of its own: glibc keeps freed memory in per-thread arenas, and once a test process has decoded
# 81-MP pictures its arenas keep growing by tens of MB whatever the app then does (measured in-process: 47-56 MB over
# 500 text calls after tests/test_bad_uploads.py, under 30 alone). An app process started for the measurement has run
# nothing else, so its growth says something about the app whatever ran before, in any order. Its growth is read as
# before in-process: VmRSS after malloc_trim(0) hands the freed heap of every arena back to the system.

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .app import start_app, stop_app

TRIM_SIGNAL = signal.SIGUSR1
TRIMMED = "testkit: freed heap handed back"  # the app's answer to TRIM_SIGNAL, in its log
# `python app.py` with one addition: on TRIM_SIGNAL it calls malloc_trim(0), then says so on stdout. (Python runs the
# handler on the main thread, which Gradio's launch keeps in a 0.1 s sleep loop.)
_APP_WITH_TRIM = f"""
import ctypes, runpy, signal
libc = ctypes.CDLL("libc.so.6")

def trim(*_):
    libc.malloc_trim(0)
    print({TRIMMED!r}, flush=True)

signal.signal({int(TRIM_SIGNAL)}, trim)
runpy.run_path("app.py", run_name="__main__")
"""


def process_rss_mb(pid: int | str = "self") -> float:
    """VmRSS of a process, in MB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def rss_mb() -> float:
    """Resident memory of this process, after handing freed heap back to the system: glibc keeps the memory of a big
    decode cached in its per-thread arenas for a while, which is not growth."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return process_rss_mb()


@dataclass
class MeasuredApp:
    """`python app.py` running in a process of its own (see `measured_app`)."""

    process: subprocess.Popen
    url: str
    log: Path

    def rss_mb(self, timeout: float = 30) -> float:
        """The app's resident memory in MB once it has handed its freed heap back (malloc_trim(0) in the app)."""
        done = self.log.read_text().count(TRIMMED)
        os.kill(self.process.pid, TRIM_SIGNAL)
        deadline = time.monotonic() + timeout
        while self.log.read_text().count(TRIMMED) <= done:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the app did not answer the trim signal:\n" + self.log.read_text()[-3000:])
            time.sleep(0.05)
        return process_rss_mb(self.process.pid)


@contextmanager
def measured_app(artifacts: Path, folder: Path) -> Iterator[MeasuredApp]:
    """The real app serving the artifact folder `artifacts`, in a process of its own whose resident memory can be
    read settled (`MeasuredApp.rss_mb`); its cache and log go in `folder`. Stopped on exit."""
    log = folder / "measured-app.log"
    env = {"INDEX_DIR": str(artifacts), "CLIPSEARCH_CACHE": str(folder / "measured-app-cache")}
    process, url = start_app(env, log, command=("-c", _APP_WITH_TRIM))
    try:
        if process.poll() is not None:
            raise AssertionError(f"the app exited at start:\n{url[-3000:]}")
        yield MeasuredApp(process, url, log)
    finally:
        stop_app(process)

"""Uploaded pictures embedded as soon as they are stored, before the search that uses them is asked for."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)

# A browser asks for a picture's search ~40 ms after its upload ends (Gradio's preview, queue join and event stream
# come first): embedding starts at the upload instead. At most this many run ahead at once; more uploads than that
# (a flood, or many visitors) are embedded when their search arrives, as before, so uploads never queue model work.
MAX_AHEAD = 2
KEPT = 32  # finished vectors kept (3 KB each): a picture searched again (a second click) reuses it


class EarlyVectors:
    """Vectors of uploaded files, started by `prepare(path)` and taken by `vector(path)`. A file is known by its
    path, size and modification time, so a path written again is embedded again; a file that could not be embedded
    gives None, and the caller's own attempt says what is wrong with it."""

    def __init__(self, embed: Callable[[str], np.ndarray]):
        self._embed = embed
        self._pool = ThreadPoolExecutor(max_workers=MAX_AHEAD, thread_name_prefix="early-picture")
        self._futures: OrderedDict[tuple, Future] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, path: str) -> bool:
        """Begin embedding `path` in the background; False where it was not begun (unknown file, or enough ahead)."""
        key = _key(path)
        if key is None:
            return False
        with self._lock:
            if key in self._futures:
                return True
            if sum(not future.done() for future in self._futures.values()) >= MAX_AHEAD:
                return False
            self._futures[key] = self._pool.submit(self._embed, path)
            while len(self._futures) > KEPT:
                self._futures.popitem(last=False)
        return True

    def begun(self, path) -> bool:
        """Whether `path` (as it is now) was prepared: its vector is on its way."""
        key = _key(path) if isinstance(path, str) else None
        with self._lock:
            return key in self._futures

    def vector(self, path: str) -> np.ndarray | None:
        """The vector of `path` if it was prepared (waiting for it while it runs) and embedded without error."""
        key = _key(path)
        with self._lock:
            future = self._futures.get(key) if key is not None else None
        if future is None:
            return None
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - the caller embeds it again and reports its own error
            log.debug("early embedding of %s failed: %s", path, error)
            return None


def _key(path: str) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return path, stat.st_size, stat.st_mtime_ns

"""The model thread: every forward pass of the process runs on one thread, with concurrent requests micro-batched."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

_CALL = "__call__"  # the lane of one-off calls (loading, calibration)


class ModelThread:
    """One worker thread that owns the model: loading, calibration and every batch of every lane run on it.

    Why one thread: PyTorch's OpenMP keeps a thread team per calling thread, and on a 2-core host two teams slow
    each other down even when one is idle (docs/decisions/0005-one-model-thread-micro-batching.md); both cores
    still work on every batch through that one team.

    Lanes micro-batch: `lane(name, fn, max_batch)` returns a callable taking one item; requests waiting on any lane
    are taken together, and each lane's items go through `fn(list_of_items) -> list_of_results` in batches of up
    to max_batch. Idle, a lone request runs at once; under load batches fill while the previous one computes, so
    throughput rises without adding latency. Errors reach only the requests of the failing batch."""

    def __init__(self, name: str = "model"):
        self._queue: queue.SimpleQueue[tuple[str, object, Future]] = queue.SimpleQueue()
        self._lanes: dict[str, tuple[Callable[[list], list], int]] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable, *args, **kwargs):
        """Call fn(*args, **kwargs) on the model thread and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self._submit(_CALL, lambda: fn(*args, **kwargs)).result()

    def lane(self, name: str, fn: Callable[[list], list], max_batch: int = 16) -> Callable:
        """A callable `item -> result` whose concurrent calls are batched into `fn` on the model thread."""
        self._lanes[name] = (fn, max_batch)
        return lambda item: self._submit(name, item).result()

    def _submit(self, lane: str, item) -> Future:
        future: Future = Future()
        self._queue.put((lane, item, future))
        return future

    def _run(self) -> None:
        while True:
            waiting = [self._queue.get()]
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for lane in dict.fromkeys(name for name, _, _ in waiting):  # lanes in order of first arrival
                entries = [(item, future) for name, item, future in waiting if name == lane]
                if lane == _CALL:
                    for call, future in entries:
                        _settle([future], call)
                    continue
                fn, max_batch = self._lanes[lane]
                for start in range(0, len(entries), max_batch):
                    batch = entries[start:start + max_batch]
                    _settle([future for _, future in batch], fn, [item for item, _ in batch])


def _settle(futures: list[Future], fn: Callable, items: list | None = None) -> None:
    """fn() for one call, fn(items) -> one result per item for a batch; errors go to the waiting callers."""
    try:
        results = [fn()] if items is None else fn(items)
    except BaseException as error:  # noqa: BLE001 - handed to the waiting callers, never kills the thread
        for future in futures:
            future.set_exception(error)
        return
    for future, result in zip(futures, results):
        future.set_result(result)

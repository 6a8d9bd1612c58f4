"""The model thread: one thread runs every model call, concurrent requests share batches, errors stay with their
batch. (Gradio's lazily configured sessions are in test_gradio_patches.)"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipsearch.core.batcher import ModelThread


def _gated(model: ModelThread) -> threading.Event:
    """Keep the model thread busy until the returned event is set, so requests pile up behind it."""
    gate, started = threading.Event(), threading.Event()
    threading.Thread(target=model.run, args=(lambda: (started.set(), gate.wait(30)),), daemon=True).start()
    assert started.wait(30)
    return gate


def test_waiting_requests_share_batches_and_each_gets_its_own_result():
    model, batches, threads = ModelThread(), [], set()

    def double(items):
        batches.append(list(items))
        threads.add(threading.get_ident())
        return [item * 2 for item in items]

    lane = model.lane("numbers", double, max_batch=4)
    gate = _gated(model)
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(lane, n) for n in range(10)]
        while model._queue.qsize() < 10:  # all ten are waiting behind the gate
            threading.Event().wait(0.01)
        gate.set()
        assert [f.result(timeout=30) for f in futures] == [n * 2 for n in range(10)]
    assert sorted(len(b) for b in batches) == [2, 4, 4] and sorted(sum(batches, [])) == list(range(10))
    assert threads == {model._thread.ident}
    assert model.run(threading.get_ident) == model._thread.ident  # one-off calls run there too


def test_an_error_reaches_only_the_callers_of_the_failing_batch():
    model = ModelThread()

    def picky(items):
        if "bad" in items:
            raise ValueError("bad item in this batch")
        return [item.upper() for item in items]

    lane = model.lane("words", picky, max_batch=2)
    gate = _gated(model)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lane, word) for word in ("bad", "one")]
        while model._queue.qsize() < 2:
            threading.Event().wait(0.01)
        later = [pool.submit(lane, word) for word in ("two", "three")]
        while model._queue.qsize() < 4:
            threading.Event().wait(0.01)
        gate.set()
        for future in futures:
            with pytest.raises(ValueError, match="bad item"):
                future.result(timeout=30)
        assert [f.result(timeout=30) for f in later] == ["TWO", "THREE"]
    assert lane("still serving") == "STILL SERVING"


def test_lanes_waiting_together_all_complete_and_run_inline_from_the_model_thread():
    model = ModelThread()
    text = model.lane("text", lambda items: [f"t:{i}" for i in items])
    image = model.lane("image", lambda items: [f"i:{i}" for i in items])
    gate = _gated(model)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(text if n % 2 else image, n) for n in range(6)]
        gate.set()
        assert [f.result(timeout=30) for f in futures] == [("t:" if n % 2 else "i:") + str(n) for n in range(6)]
    # a call made from the model thread itself runs inline instead of waiting on itself
    assert model.run(lambda: model.run(lambda: "inline")) == "inline"

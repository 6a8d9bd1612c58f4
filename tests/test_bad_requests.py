"""Bad requests through the API: text and k validation, the upload size limit, a storm of bad requests that leaves
memory bounded, and an overfull queue that answers 'busy, try again'."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from testkit.helpers import UNUSABLE, call, encoded, search_data, upload
from testkit.models import draw_shape


def test_an_upload_over_the_size_limit_is_refused_at_the_door(app_server, tmp_path):
    big = tmp_path / "huge.jpg"
    big.write_bytes(encoded(Image.new("RGB", (64, 64)), "JPEG") + bytes(25 * 2**20 + 1))
    with httpx.Client(base_url=app_server[0], timeout=120) as http:
        response = http.post("/gradio_api/upload", files={"files": (big.name, big.read_bytes(), "image/jpeg")})
    assert response.status_code == 413
    assert "exceeded maximum allowed size of 26214400 bytes" in response.text  # Gradio's sentence, 25 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):
        Client(app_server[0], verbose=False).predict(handle_file(str(big)), 3, api_name="/search_image")


def test_text_edge_cases_are_answered_or_refused_with_a_sentence(client, app_server):
    url = app_server[0]
    _, clean = client.predict("a red circle", 5, api_name="/search_text")
    # far longer than the model's context and the 1000-character cap: cut, then truncated by the tokenizer
    long_text = "a red circle " * 10_000
    started = time.perf_counter()
    _, long_hits = client.predict(long_text, 5, api_name="/search_text")
    assert time.perf_counter() - started < 30
    _, capped = client.predict(" ".join(long_text.split())[:1000], 5, api_name="/search_text")
    assert [h["image_id"] for h in long_hits] == [h["image_id"] for h in capped]
    # control characters and escape sequences carry no meaning: the same search as the clean text
    _, noisy = client.predict("a red\x00 circle\x1b\x07\r\n\t", 5, api_name="/search_text")
    assert [h["image_id"] for h in noisy] == [h["image_id"] for h in clean]
    for answered in ("\u202ba red circle\u202c", "🔴 a red circle ⭕", "一个红色的圆 a red circle", "دائرة حمراء"):
        kind, outputs = call(url, "search_text", [answered, 3])
        assert kind == "complete" and len(outputs[1]) == 3, (answered, outputs)
    for blank in ("\u200b\u200b", "\u3000\u00a0\n\r\t", "\x00\x01\x1f", "\ufeff"):
        kind, shown = call(url, "search_text", [blank, 3])
        assert kind == "refused:422" and shown.startswith("Please type a description"), (blank, shown)
    kind, shown = call(url, "search_text", [None, 3])
    assert kind == "refused:422" and "must be text" in shown


ARENA_STEP_MB = 15  # a round that grew more than this took a thread's first malloc arena (~25 MB), not a leak
BAD_K = [0, -3, 51, 10**12, 2.5, "abc", None, True, [5], {"k": 5}]


@pytest.mark.parametrize("endpoint", ["search_text", "search_image", "search_similar", "search"])
def test_k_outside_the_range_or_of_the_wrong_type_is_refused_with_a_message(app_server, tmp_path, endpoint):
    url, service = app_server
    picture = tmp_path / "q.png"
    draw_shape("green", "cross", size=64, seed=7).save(picture)
    image_id = int(service.searcher.gallery.rows([0])[0].image_id)
    first = {"search_text": lambda k: ["a red circle", k], "search_image": lambda k: [upload(url, picture), k],
             "search_similar": lambda k: [image_id, k], "search": lambda k: search_data(url, text="a red circle", k=k)}
    for k in BAD_K:
        kind, shown = call(url, endpoint, first[endpoint](k))
        if kind == "complete" and endpoint in ("search_similar", "search") and k in (2.5, True):
            # Coerced, not refused: /search_similar's k is a gr.Number(precision=0), which rounds (and reads true
            # as 1), and /search's state takes int(k) before checking it. Answered with that many results.
            assert len(shown[1]) in (int(k), round(k)), (endpoint, k)
            continue
        assert kind != "complete", (endpoint, k, shown)  # never answered with some other number of results
        assert kind in ("error", "refused:400", "refused:422"), (endpoint, k, kind, shown)  # never a server fault
        assert "k must be a whole number between 1 and 50" in str(shown), (endpoint, k, shown)
    kind, outputs = call(url, endpoint, first[endpoint](50))  # the edges of the range are fine
    assert kind == "complete" and len(outputs[1]) == min(50, len(service.searcher.gallery))


@pytest.mark.parametrize("k", [2.5, True, 51])
def test_k_refused_by_the_validator_reaches_python_clients_as_a_sentence(client, k):
    with pytest.raises(Exception, match="k must be a whole number between 1 and 50") as refused:
        client.predict(1000 if k == 51 else "a red circle", k, api_name="/search_similar" if k == 51 else
                       "/search_text")
    assert "ValidationError" in type(refused.value).__name__


@pytest.mark.parametrize("k", [0, 51, "abc", None])
def test_k_refused_by_the_slider_reaches_python_clients_as_a_sentence(client, k):
    with pytest.raises(Exception, match=r"k must be|minimum value|maximum value") as refused:
        client.predict("a red circle", k, api_name="/search_text")
    assert "400 Bad Request" not in str(refused.value)


@pytest.mark.memory
def test_after_a_storm_of_bad_requests_the_server_answers_and_memory_is_bounded(measured_app, tmp_path):
    """Measured on `python app.py` in a process of its own, whatever this test process decoded before."""
    url = measured_app.url
    uploads = {name: make() for name, (make, _) in UNUSABLE.items() if "bomb" in name or "pdf" in name}

    def storm(round_: int) -> None:
        for name, data in uploads.items():
            (tmp_path / name).write_bytes(data)
            call(url, "search_image", [upload(url, tmp_path / name), 3])
        # big pictures (40 MP in a few hundred KB) that decode fine: one searched, one sent with an invalid k
        # (decoded by the validator, then refused: nothing of it may stay behind)
        for number, k, outcome in ((0, 3, "complete"), (1, 2.5, "refused:422")):
            big = tmp_path / f"big-{round_}-{number}.png"
            big.write_bytes(encoded(Image.new("RGB", (8000, 5000), (round_ * 37 % 256, 80, 160 + number)), "PNG"))
            assert call(url, "search_image", [upload(url, big), k])[0] == outcome
        for k in (0, "abc", 2.5):
            call(url, "search_text", ["a red circle", k])
        call(url, "search_text", ["a red circle " * 5000, 3])
        call(url, "search_similar", [123456789, 3])
        call(url, "search", search_data(url, text="", k=3))

    storm(0)  # warm-up: first-time allocations, caches, thread pools
    readings = [measured_app.rss_mb()]
    for round_ in range(1, 9):
        storm(round_)
        readings.append(measured_app.rss_mb())
    kind, outputs = call(url, "search_text", ["a yellow triangle", 3])
    assert kind == "complete" and len(outputs[1]) == 3, (kind, outputs)
    # A leak grows round after round. A thread's first malloc arena is a one-off step of ~25 MB instead, in any round
    # (seen in rounds 2-7, with or without the image graph, sometimes handed back later), and several threads serve
    # these requests (Gradio's workers, the early-picture pool): two such steps were seen in one run, then flat.
    steps = [later - earlier for earlier, later in zip(readings, readings[1:])]
    shown = ", ".join(f"{mb:.0f}" for mb in readings)
    assert max(steps) < 64, f"resident memory jumped {max(steps):.0f} MB in one round of bad requests (MB: {shown})"
    creeping = sum(step for step in steps if step < ARENA_STEP_MB)
    assert statistics.median(steps) < 2 and creeping < 12, \
        f"resident memory keeps growing over 8 rounds of bad requests, a leak (MB after each round: {shown})"


# === 2. Load shedding ==============================================================================================
def test_an_overfull_queue_says_busy_try_again(app_server):
    """A second app on the same gallery with a two-place queue and an encoder held shut: once 16 searches run and
    2 wait, the next ones are refused at once with a readable 'busy' answer, and every accepted one completes."""
    from clipsearch.core.search import Searcher
    from clipsearch.serve.service import Service
    from clipsearch.web.ui import build_ui, launch

    service = app_server[1]
    gate = threading.Event()
    searcher = Searcher(service.searcher.gallery, service.searcher.encoder)
    real = searcher._encode_text
    searcher._encode_text = lambda text: (gate.wait(60), real(text))[1]
    demo = build_ui(Service(searcher, service.source, 0.0, 0.0))
    launch(demo, Service(searcher, service.source, 0.0, 0.0), queue_size=2, prevent_thread_lock=True,
           server_name="127.0.0.1", quiet=True)
    url = demo.local_url.rstrip("/")
    accepted, refused = [], []
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for number in range(40):
                response = http.post("/gradio_api/call/search_text", json={"data": [f"a red circle {number}", 3]})
                (accepted if response.status_code == 200 else refused).append(response)
                time.sleep(0.02)
            assert refused, "the queue never filled"
            assert {r.status_code for r in refused} == {503}
            busy = refused[0].json()["detail"]
            assert "busy" in busy and "try again" in busy, busy
            assert refused[0].headers.get("retry-after")
            with pytest.raises(Exception, match="(?i)queue is full.*try again"):  # gradio_client's own sentence
                Client(url, verbose=False).predict("a blue square", 3, api_name="/search_text")
            gate.set()
            for response in accepted:
                kind = None
                with http.stream("GET", f"/gradio_api/call/search_text/{response.json()['event_id']}") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("event:"):
                            kind = line.split(":", 1)[1].strip()
                            if kind in ("complete", "error"):
                                break
                assert kind == "complete"
        assert 18 <= len(accepted) < 40
    finally:
        gate.set()
        demo.close()


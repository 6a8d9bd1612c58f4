"""A picture is embedded from the moment it is uploaded: its search finds the vector ready (the model runs once per
picture), answers exactly as before, and an upload flood or a file written again cannot misuse it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clipsearch.core.early import MAX_AHEAD, EarlyVectors
from testkit.helpers import assert_sentence, call, kinds, search_data, upload
from testkit.models import draw_shape


@pytest.fixture
def counted(app_server, monkeypatch):
    """The app's image forward passes, one entry (the batch size) per pass."""
    encoder = app_server[1].searcher.encoder
    passes, encode = [], encoder.encode_images
    monkeypatch.setattr(encoder, "encode_images", lambda images: passes.append(len(images)) or encode(images))
    return passes


def _wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("endpoint", ["search_image", "search"])
def test_an_uploaded_picture_is_embedded_before_its_search_which_answers_as_before(app_server, counted, tmp_path,
                                                                                   endpoint):
    url, service = app_server
    picture = draw_shape("green", "triangle", size=64, seed=4242 + len(endpoint))
    expected = [hit.image_id for hit in service.searcher.search_image(picture, 5)]  # embedded here, not uploaded
    counted.clear()
    path = tmp_path / "query.png"
    picture.save(path)

    uploaded = upload(url, path)
    _wait_for(lambda: counted == [1])  # embedded after the upload alone, before anything asked for it
    data = [uploaded, 5] if endpoint == "search_image" else search_data(url, images=[uploaded], k=5)
    status, outputs = call(url, endpoint, data)

    assert status == "complete", outputs
    hits = outputs[1]
    assert [hit["image_id"] for hit in hits] == expected
    assert kinds(service, hits)[0] == "green-triangle"
    assert counted == [1], "the search embedded the picture again"


def test_a_file_that_is_not_a_picture_gets_the_same_sentence_after_its_upload(app_server, tmp_path):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(b"these bytes are not a JPEG at all\n" * 10)
    uploaded = upload(app_server[0], path)
    early = app_server[1].searcher.early
    assert early.begun(uploaded["path"]) and early.vector(uploaded["path"]) is None  # tried, and failed quietly
    status, message = call(app_server[0], "search_image", [uploaded, 5])
    assert status != "complete" and "not an image" in str(message), message
    assert_sentence(message)


def _slow(gate: threading.Event, started: list):
    def embed(path: str) -> np.ndarray:
        started.append(path)
        gate.wait(30)
        return np.full(4, len(started), dtype=np.float32)
    return embed


def test_an_upload_flood_never_runs_more_than_a_few_embeddings_ahead(tmp_path):
    gate, started = threading.Event(), []
    early = EarlyVectors(_slow(gate, started))
    paths = []
    for n in range(MAX_AHEAD + 3):
        paths.append(str(tmp_path / f"{n}.png"))
        (tmp_path / f"{n}.png").write_bytes(bytes([n]) * 10)
    begun = [early.prepare(path) for path in paths]
    assert begun == [True] * MAX_AHEAD + [False] * 3
    gate.set()
    assert early.vector(paths[0]) is not None
    assert early.vector(paths[-1]) is None  # not begun: its search embeds it, as without early embedding
    _wait_for(lambda: len(started) == MAX_AHEAD)
    assert early.prepare(paths[-1])  # room again once those finished


def test_a_file_written_again_at_the_same_path_is_never_answered_with_the_old_vector(tmp_path):
    gate, started = threading.Event(), []
    gate.set()
    early = EarlyVectors(_slow(gate, started))
    path = tmp_path / "picture.png"
    path.write_bytes(b"first picture")
    early.prepare(str(path))
    assert early.vector(str(path)) is not None
    path.write_bytes(b"a second, longer picture")
    assert not early.begun(str(path))
    assert early.vector(str(path)) is None
    assert early.vector(str(tmp_path / "never-uploaded.png")) is None

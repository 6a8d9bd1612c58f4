"""The CPU fast path (bf16 weights or dynamic int8): same vectors as fp32 to cosine >= 0.99, same top-5 results."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from clipsearch.core import precision as fast_paths
from clipsearch.core.encoder import Encoder, EncoderError
from clipsearch.core.gallery import Gallery
from clipsearch.core.precision import calibration_images, cpu_has_bf16
from clipsearch.core.search import Searcher
from testkit.models import COLORS, SHAPES, caption_for, draw_shape

FAST = ("bf16", "int8")
TEXTS = ["a red circle", "a photo of a dog", "two people walking on a beach at sunset", "x", "a " * 40]


def sample_images(count: int = 4) -> list:
    return [draw_shape(color, shape, size=64, seed=100 + n)
            for n, (color, shape) in enumerate(zip(list(COLORS) * 2, SHAPES * 2))][:count]


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.fixture(scope="module")
def shapes_encoders(shapes_model) -> dict[str, Encoder]:
    return {precision: Encoder.load(str(shapes_model), None, "cpu", precision=precision)
            for precision in ("fp32", *FAST)}


@pytest.mark.parametrize("precision", FAST)
def test_fast_path_vectors_match_fp32_on_the_tiny_clip(tiny_clip, precision):
    reference = Encoder.load(str(tiny_clip), None, "cpu")
    fast = Encoder.load(str(tiny_clip), None, "cpu", precision=precision)
    assert reference.precision == "fp32" and fast.precision == precision
    assert fast.info == reference.info  # the manifest's ModelInfo never depends on the precision
    images = sample_images() + calibration_images(64)
    assert worst_cosine(reference.encode_texts(TEXTS), fast.encode_texts(TEXTS)) >= 0.99
    assert worst_cosine(reference.encode_images(images), fast.encode_images(images)) >= 0.99
    vectors = fast.encode_texts(TEXTS)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_fast_path_vectors_match_fp32_on_the_shapes_model(shapes_encoders):
    captions = [caption_for(color, shape, seed) for color in COLORS for shape in SHAPES for seed in range(2)]
    images = sample_images(8)
    reference = shapes_encoders["fp32"]
    for precision in FAST:
        fast = shapes_encoders[precision]
        assert fast.precision == precision
        assert worst_cosine(reference.encode_texts(captions), fast.encode_texts(captions)) >= 0.99, precision
        assert worst_cosine(reference.encode_images(images), fast.encode_images(images)) >= 0.99, precision


def test_fast_path_returns_the_same_top_5_on_the_shapes_gallery(shapes_artifacts, shapes_encoders):
    """Same images in the same order for (nearly) every query. The shapes gallery has near-ties (fp32 scores a few
    thousandths apart, e.g. the second red circle vs the first yellow one for "a red circle"), which no fast path
    can order exactly like fp32; so the only difference allowed is two images trading places whose fp32 scores
    differ by less than twice the query's worst score error over the whole gallery (below 0.02 by the cosine bound)
    - i.e. images the fast path cannot tell apart at its measured accuracy."""
    gallery = Gallery.open(shapes_artifacts)
    searchers = {name: Searcher(gallery, encoder) for name, encoder in shapes_encoders.items()}
    vectors = np.asarray(gallery.vectors)

    def search(searcher: Searcher, query) -> list:
        return searcher.search_text(query, 5) if isinstance(query, str) else searcher.search_image(query, 5)

    def encode(encoder: Encoder, query) -> np.ndarray:
        return (encoder.encode_texts([query]) if isinstance(query, str) else encoder.encode_images([query]))[0]

    queries = [caption_for(color, shape) for color in COLORS for shape in SHAPES]
    queries += [draw_shape(color, shape, size=64, seed=987_000 + n)
                for n, (color, shape) in enumerate([("blue", "square"), ("red", "circle"), ("yellow", "cross"),
                                                    ("green", "triangle"), ("purple", "circle")])]
    identical = 0
    for query in queries:
        expected = search(searchers["fp32"], query)
        fp32_scores = vectors @ encode(shapes_encoders["fp32"], query)
        for precision in FAST:
            found = search(searchers[precision], query)
            error = float(np.max(np.abs(vectors @ encode(shapes_encoders[precision], query) - fp32_scores)))
            assert error < 0.02, (precision, query, error)
            identical += [h.row for h in found] == [h.row for h in expected]
            for want, got in zip(expected, found):
                assert want.row == got.row or abs(fp32_scores[want.row] - fp32_scores[got.row]) <= 2 * error, \
                    (precision, query, [h.row for h in expected], [h.row for h in found], error)
    assert identical >= 0.9 * len(FAST) * len(queries)  # near-ties are rare: nearly every list is identical outright


def test_auto_picks_a_fast_path_for_this_host(tiny_clip, caplog):
    with caplog.at_level(logging.INFO, logger="clipsearch"):
        encoder = Encoder.load(str(tiny_clip), None, "cpu", precision="auto")
    raced = "amx_bf16" in fast_paths.cpu_flags()  # then both are timed and the faster kept (test below)
    assert encoder.precision in FAST
    assert encoder.precision == fast_paths.auto_precisions()[0] or raced
    assert f"precision {encoder.precision}" in caplog.text and "calibration cosine" in caplog.text
    assert fast_paths.auto_precisions()[0] == ("bf16" if "amx_bf16" in fast_paths.cpu_flags() else "int8")
    assert ("bf16" in fast_paths.auto_precisions()) == cpu_has_bf16()


@pytest.mark.parametrize("faster", FAST)
def test_on_amx_auto_keeps_the_faster_fast_path_for_the_batch_it_will_run(tiny_clip, monkeypatch, caplog, faster):
    """Where AMX makes bf16 fast, which path wins depends on the model and the batch (ViT-B/32 here: int8 for one
    query, bf16 for batches of 32), so auto times each passing path on passes of `batch` and keeps the faster; its
    vectors are then exactly that path's own."""
    monkeypatch.setattr(fast_paths, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})
    timed = []

    def pass_seconds(encoder, texts, images, batch):
        timed.append((encoder.precision, batch))
        return 0.01 if encoder.precision == faster else 0.02
    monkeypatch.setattr(fast_paths, "pass_seconds", pass_seconds)
    with caplog.at_level(logging.INFO, logger="clipsearch"):
        encoder = Encoder.load(str(tiny_clip), None, "cpu", precision="auto", batch=32)
    assert sorted(timed) == [("bf16", 32), ("int8", 32)]
    assert encoder.precision == faster
    assert f"precision {faster}: calibration cosine to fp32" in caplog.text and "the fastest here" in caplog.text
    direct = Encoder.load(str(tiny_clip), None, "cpu", precision=faster)
    assert np.array_equal(encoder.encode_texts(TEXTS), direct.encode_texts(TEXTS))
    images = sample_images(2)
    assert np.array_equal(encoder.encode_images(images), direct.encode_images(images))


def test_a_fast_path_that_drifts_falls_back_to_fp32_and_says_why(tiny_clip, caplog):
    with caplog.at_level(logging.INFO, logger="clipsearch"):  # a gate nothing but fp32 itself can pass
        encoder = Encoder.load(str(tiny_clip), None, "cpu", precision="auto", min_cosine=1.01)
    assert encoder.precision == "fp32"
    assert "rejected: calibration cosine to fp32" in caplog.text and "serving in fp32" in caplog.text
    reference = Encoder.load(str(tiny_clip), None, "cpu")
    assert np.array_equal(encoder.encode_texts(TEXTS), reference.encode_texts(TEXTS))
    images = sample_images(2)
    assert np.array_equal(encoder.encode_images(images), reference.encode_images(images))


def test_unknown_precision_is_refused_with_the_choices(tiny_clip):
    with pytest.raises(EncoderError, match="auto, fp32, bf16, int8"):
        Encoder.load(str(tiny_clip), None, "cpu", precision="fp16")


def test_siglip_takes_the_fast_path_too(tiny_siglip):
    reference = Encoder.load(str(tiny_siglip), None, "cpu")
    fast = Encoder.load(str(tiny_siglip), None, "cpu", precision="int8")
    assert fast.precision == "int8"
    assert worst_cosine(reference.encode_texts(TEXTS), fast.encode_texts(TEXTS)) >= 0.99


def test_repeated_text_queries_reuse_the_vector(shapes_artifacts, shapes_encoders, monkeypatch):
    from clipsearch.core import search as search_module

    searcher = Searcher(Gallery.open(shapes_artifacts), shapes_encoders["fp32"])
    calls = []
    encode = searcher._encode_text
    monkeypatch.setattr(searcher, "_encode_text", lambda text: calls.append(text) or encode(text))
    first = searcher.search_text("a red circle", 5)
    again = searcher.search_text("  a red   circle ", 5)  # the same query once cleaned
    assert calls == ["a red circle"] and [h.row for h in again] == [h.row for h in first]
    monkeypatch.setattr(search_module, "TEXT_CACHE_SIZE", 2)
    for text in ("a blue square", "a green cross", "a red circle"):
        searcher.search_text(text, 1)
    assert calls == ["a red circle", "a blue square", "a green cross", "a red circle"]  # evicted, encoded again

"""Composed queries, negation, filters, paging and near-duplicate collapsing, through the search core and the API."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gradio_client import Client, handle_file

from clipsearch.core.encoder import Encoder
from clipsearch.core.gallery import Gallery
from clipsearch.core.query import Filters, Plan, Query
from clipsearch.core.search import QueryError, Searcher
from testkit.galleries import write_shapes_folder
from testkit.helpers import run_build
from testkit.models import draw_shape


def search(searcher: Searcher, vector, k, *, page=0, filters=None, collapse=False, diversity=0.0, min_score=None,
           query_text=None):
    """One checked plan, then Searcher.search, where every search ends."""
    return searcher.search(vector, Plan.checked(k, page, filters, collapse, diversity, min_score), query_text)


def _searcher(folder) -> Searcher:
    gallery = Gallery.open(folder)
    return Searcher(gallery, Encoder.load(gallery.manifest.model["model_id"], None, "cpu"))


@pytest.fixture(scope="module")
def shapes(shapes_artifacts) -> Searcher:
    return _searcher(shapes_artifacts)


def _kind(hit) -> str:
    return hit.file_name.rsplit("-", 1)[0]


def test_words_steer_a_picture_search(shapes, tmp_path):
    blue_square = draw_shape("blue", "square", size=64, seed=4711)
    alone, _ = shapes.compose(Query(images=[blue_square]))
    mixed, text = shapes.compose(Query(text="red", images=[blue_square], image_weight=0.5))
    before = [_kind(h) for h in search(shapes, alone, 10)]
    after = [_kind(h) for h in search(shapes, mixed, 10, query_text=text)]
    assert sum(k.startswith("red-") for k in after[:4]) > sum(k.startswith("red-") for k in before[:4])
    def position(kinds):
        return kinds.index("red-square") if "red-square" in kinds else len(kinds)

    assert position(after) < position(before)  # "this, but red": red squares rise
    assert after[0].endswith("-square")  # ... and the shape stays


def test_negative_text_pushes_a_direction_away(shapes):
    plain, _ = shapes.compose(Query(text="a circle"))
    minus_red, _ = shapes.compose(Query(text="a circle", negative="red", negative_weight=1.0))
    reds_before = sum(_kind(h).startswith("red-") for h in search(shapes, plain, 8))
    reds_after = sum(_kind(h).startswith("red-") for h in search(shapes, minus_red, 8))
    assert reds_after < reds_before or reds_before == 0 and reds_after == 0
    assert reds_after == 0


def test_several_pictures_are_averaged(shapes):
    pictures = [draw_shape("green", "cross", size=64, seed=s) for s in (1, 2, 3)]
    vector, _ = shapes.compose(Query(images=pictures))
    singles = [shapes.compose(Query(images=[p]))[0] for p in pictures]
    expected = np.mean(singles, axis=0)
    assert np.allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)


def test_empty_or_cancelled_queries_get_a_sentence(shapes):
    with pytest.raises(QueryError, match="description or add an example image"):
        shapes.compose(Query(text="   "))
    with pytest.raises(QueryError, match="image_weight must be between 0 and 1"):
        shapes.compose(Query(text="red", images=[draw_shape("red", "circle")], image_weight=3))


def test_paging_continues_exactly_where_the_first_page_stopped(shapes):
    vector, _ = shapes.compose(Query(text="a yellow triangle"))
    whole = [h.image_id for h in search(shapes, vector, 15)]
    pages = [h for page in range(3) for h in search(shapes, vector, 5, page=page)]
    assert [h.image_id for h in pages] == whole and [h.rank for h in pages] == list(range(1, 16))
    with pytest.raises(QueryError, match="Results stop at"):
        search(shapes, vector, 50, page=20)


@pytest.fixture(scope="module")
def coco_searcher(tmp_path_factory, coco_dir, tiny_clip) -> Searcher:
    out = tmp_path_factory.mktemp("coco-built") / "out"
    assert run_build("--coco-dir", coco_dir[0], "--model", tiny_clip, "--out", out, "--eval", "none") == 0
    return _searcher(out)


@pytest.mark.parametrize("categories, match_all, splits", [
    (["circle"], False, []), (["circle", "cross"], False, []), (["square"], False, ["val2017"]),
    ([], False, ["val2017"]),
])
def test_filters_give_the_best_k_among_matching_images(coco_searcher, categories, match_all, splits):
    gallery = coco_searcher.gallery
    vector, _ = coco_searcher.compose(Query(text="a red circle"))
    hits = search(coco_searcher, vector, 7, filters=Filters(categories, match_all, splits))
    rows = [r for r in gallery.rows(list(range(len(gallery))))
            if (not categories or set(r.categories) & set(categories)) and (not splits or r.split in splits)]
    scores = np.asarray([gallery.vector(r.row) @ vector for r in rows])
    best = [rows[i].image_id for i in np.argsort(-scores, kind="stable")[:7]]
    assert len(hits) == min(7, len(rows)) and [h.image_id for h in hits] == best  # exact, no shortfall
    assert all(set(h.categories) & set(categories) for h in hits) if categories else True


def test_match_all_and_unknown_names(coco_searcher):
    vector, _ = coco_searcher.compose(Query(text="a red circle"))
    assert search(coco_searcher, vector, 5, filters=Filters(["circle", "cross"], match_all=True)) == []
    with pytest.raises(QueryError, match="Unknown category or split: unicorn"):
        search(coco_searcher, vector, 5, filters=Filters(["unicorn"]))


def test_near_duplicates_can_be_collapsed(tmp_path, shapes_model):
    folder = tmp_path / "gallery"
    write_shapes_folder(folder, per_combo=1)
    for copy in range(3):  # the same shot three more times
        shutil.copy(folder / "red-circle-0.png", folder / f"red-circle-0-copy{copy}.png")
    out = tmp_path / "out"
    assert run_build("--images", folder, "--model", shapes_model, "--out", out, "--eval", "none") == 0
    searcher = _searcher(out)
    vector = searcher.gallery.vector(searcher.gallery.row_of(
        next(r.image_id for r in searcher.gallery.rows(list(range(len(searcher.gallery))))
             if r.file_name == "red-circle-0.png")))
    plain = search(searcher, vector, 5)
    collapsed = search(searcher, vector, 5, collapse=True)
    assert sum(h.file_name.startswith("red-circle-0") for h in plain) == 4
    assert sum(h.file_name.startswith("red-circle-0") for h in collapsed) == 1 and len(collapsed) == 5


def test_the_search_endpoint_composes_filters_and_pages(app_server, tmp_path):
    client = Client(app_server[0], verbose=False)
    picture = tmp_path / "blue-square.png"
    draw_shape("blue", "square", size=64, seed=4711).save(picture)
    _, hits = client.predict("red", [handle_file(str(picture))], 0.5, "", 0.5, [], False, [], False, 0, 0, None,
                             None, 3, 0, api_name="/search")
    assert len(hits) == 3 and hits[0]["rank"] == 1
    _, second = client.predict("red", [handle_file(str(picture))], 0.5, "", 0.5, [], False, [], False, 0, 0,
                               None, None, 3, 1, api_name="/search")
    assert [h["rank"] for h in second] == [4, 5, 6]
    assert not {h["image_id"] for h in hits} & {h["image_id"] for h in second}
    with pytest.raises(Exception, match="'unicorn' .* is not in the list of choices"):
        client.predict("red", [], 0.5, "", 0.5, ["unicorn"], False, [], False, 0, 0, None, None, 3, 0,
                       api_name="/search")
    liked = [h["image_id"] for h in hits if "square" in h["caption"]][:1]
    _, refined = client.predict("red", [handle_file(str(picture))], 0.5, "", 0.5, [], False, [], False, 0, 0,
                                liked, None, 3, 0, api_name="/search")
    assert len(refined) == 3


def test_diversity_reranks_for_variety_and_min_score_drops_weak_hits(shapes):
    vector, _ = shapes.compose(Query(text="a red circle"))
    plain = search(shapes, vector, 6)
    varied = search(shapes, vector, 6, diversity=0.7)
    assert varied[0].image_id == plain[0].image_id  # the best match stays first

    def spread(hits):
        vectors = np.stack([shapes.gallery.vector(h.row) for h in hits])
        similarity = vectors @ vectors.T
        return float(similarity[np.triu_indices(len(hits), 1)].mean())

    assert spread(varied) < spread(plain)
    threshold = plain[2].score - 1e-4  # hit scores are rounded to 4 decimals
    assert [h.image_id for h in search(shapes, vector, 6, min_score=threshold)] == [h.image_id for h in plain[:3]]
    with pytest.raises(QueryError, match="diversity must be between 0"):
        search(shapes, vector, 6, diversity=2)


def test_relevance_feedback_moves_toward_marked_results(shapes):

    vector, _ = shapes.compose(Query(text="a circle"))
    first = search(shapes, vector, 10)
    blue = [h.image_id for h in first if h.file_name.startswith("blue-")][:1]
    others = [h.image_id for h in first if not h.file_name.startswith("blue-")][:2]
    assert blue, "the query should surface at least one blue circle"
    refined = search(shapes, shapes.with_feedback(vector, more_like=blue, less_like=others), 10)
    blues = lambda hits: sum(h.file_name.startswith("blue-") for h in hits[:4])  # noqa: E731
    assert blues(refined) > blues(first) or blues(first) == 4
    with pytest.raises(QueryError, match="not in this gallery"):
        shapes.with_feedback(vector, more_like=[987654321])

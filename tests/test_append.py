"""Incremental add: new images are embedded and appended; old rows, ids, vectors and thumbnails stay as they were."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from clipsearch.core.gallery import Gallery
from clipsearch.core.manifest import MANIFEST, Manifest, verify_files
from testkit.galleries import write_shapes_folder
from testkit.helpers import run_build
from testkit.models import draw_shape


def test_append_embeds_only_new_images_and_keeps_ids(tmp_path, tiny_clip, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    write_shapes_folder(first, per_combo=1)
    second.mkdir()
    for number, (color, shape) in enumerate([("red", "star"), ("blue", "star"), ("green", "moon")]):
        draw_shape(color, "circle", size=64, seed=90 + number).save(second / f"new-{color}-{shape}.png")
    out = tmp_path / "out"
    assert run_build("--images", first, "--model", tiny_clip, "--out", out, "--eval", "none") == 0
    before = Manifest.read(out)
    old_vectors = np.load(out / "embeddings.npy")
    old_rows = pq.read_table(out / "metadata.parquet").select(["image_id", "file_name"]).to_pylist()
    old_packs = {name: (out / name).read_bytes() for name in before.thumbnails.files + before.serving.files}

    assert run_build("--append", "--images", second, "--out", out, "--eval", "none") == 0
    after = Manifest.read(out)
    verify_files(out, after)
    assert after.count == before.count + 3 and len(after.sources) == 2
    vectors = np.load(out / "embeddings.npy")
    assert np.array_equal(vectors[:before.count], old_vectors)  # old rows were not re-embedded
    rows = pq.read_table(out / "metadata.parquet").select(["image_id", "file_name"]).to_pylist()
    assert rows[:before.count] == old_rows
    assert [r["image_id"] for r in rows[before.count:]] == [before.count + 1, before.count + 2, before.count + 3]
    assert all((out / name).read_bytes() == data for name, data in old_packs.items())  # the serving copy too
    assert after.serving == before.serving and after.serving.image_graph is not None  # and its image graph
    assert all(after.files[name] == before.files[name] for name in before.serving.files)
    assert len(after.thumbnails.files) == len(before.thumbnails.files) + 1
    gallery = Gallery.open(out)
    new_row = gallery.row_of(before.count + 1)  # new ids follow the sorted paths
    assert gallery.rows([new_row])[0].file_name == "new-blue-star.png"
    assert gallery.thumbnails.read(new_row)[:2] == b"\xff\xd8"
    assert np.allclose(gallery.index.reconstruct(new_row), vectors[new_row])

    manifest_bytes = (out / MANIFEST).read_bytes()
    assert run_build("--append", "--images", second, "--out", out, "--eval", "none") == 0  # nothing new
    assert (out / MANIFEST).read_bytes() == manifest_bytes


def test_append_refuses_another_model(tmp_path, tiny_clip, tiny_siglip, capsys):
    folder = tmp_path / "g"
    write_shapes_folder(folder, per_combo=1)
    out = tmp_path / "out"
    assert run_build("--images", folder, "--model", tiny_clip, "--out", out, "--eval", "none") == 0
    assert run_build("--append", "--images", folder, "--model", tiny_siglip, "--out", out) == 2
    assert "appending must use the same model" in capsys.readouterr().err

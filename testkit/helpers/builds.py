"""The builder CLI run in-process, and two builds of the same input compared file by file."""

from __future__ import annotations

import json
from pathlib import Path


def run_build(*args: str) -> int:
    """The builder CLI in-process (same code path as `python -m builder.build`)."""
    from builder.build import main

    return main(["--quiet", "--num-workers", "0", *map(str, args)])


# What may differ between two builds of the same input: when and how fast they ran, and the checkout's git sha
# (in a live working tree HEAD can move between the two builds of one test).
NOT_BUILT = ("build_seconds", "images_per_second", "created_at", "builder_version")


def assert_same_build(first: Path, second: Path) -> dict:
    """Two artifact folders hold the same files, byte for byte, and manifests equal but for NOT_BUILT; returns
    that manifest."""
    from clipsearch.core.manifest import MANIFEST

    names = sorted(p.name for p in first.iterdir() if p.is_file())
    assert names == sorted(p.name for p in second.iterdir() if p.is_file())
    for name in names:
        if name != MANIFEST:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    built = [{k: v for k, v in json.loads((folder / MANIFEST).read_text()).items() if k not in NOT_BUILT}
             for folder in (first, second)]
    assert built[0] == built[1]
    return built[0]


def serving_copy_in_one_file(build: Path, out: Path) -> Path:
    """Fill `out` (existing, empty) with `build`'s files as builds before 2026-12-06 published them: every torch
    tower inside the serving copy's one file and none apart, the manifest naming no tower file (the other files are
    hard links). Returns `out`."""
    import dataclasses
    import os

    from transformers import AutoConfig

    from clipsearch.core.manifest import MANIFEST, SERVING_MODEL, Manifest, hash_files, write_manifest
    from clipsearch.core.serving import load_serving_copy, save_serving_copy

    manifest = Manifest.read(build)
    serving, towers = manifest.serving, manifest.serving.towers
    for name in manifest.files:
        if name not in {*towers, SERVING_MODEL, MANIFEST}:
            os.link(build / name, out / name)
    config = AutoConfig.from_pretrained(manifest.model["model_id"])
    model, references = load_serving_copy(config, build / SERVING_MODEL, [build / name for name in towers])
    save_serving_copy(model, out / SERVING_MODEL, references)
    graphs = {kind: dataclasses.replace(graph, tower=None) for kind in ("image_graph", "text_graph")
              if (graph := getattr(serving, kind))}
    manifest.serving = dataclasses.replace(serving, size=(out / SERVING_MODEL).stat().st_size, **graphs)
    kept = {name: entry for name, entry in manifest.files.items() if name not in towers}
    manifest.files = {**kept, **hash_files(out, [SERVING_MODEL])}
    write_manifest(out, manifest)
    return out

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

"""Shared fixtures: tiny checkpoints, the trained shapes model, synthetic galleries and built artifact sets."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Builds in tests never reach for the real Karpathy split (tests that need it point CLIPSEARCH_KARPATHY at a fixture).
os.environ.setdefault("CLIPSEARCH_KARPATHY", "off")

from tiny_models import COLORS, SHAPES, cached_shapes_clip, caption_for, draw_shape, save_tiny_clip  # noqa: E402

SHAPE_CATEGORY_IDS = {shape: number for number, shape in enumerate(SHAPES, start=1)}


def pytest_collection_modifyitems(items):
    """Tests marked `memory` (resident-memory growth of the in-process app) run first: after the tests that decode
    81-MP pictures and bombs in this same process, glibc's per-thread arenas keep growing by tens of MB whatever the
    app does (measured: 47-56 MB over 500 text calls then, under 30 alone), which says nothing about the app."""
    items.sort(key=lambda item: item.get_closest_marker("memory") is None)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", "clip")


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-siglip", "siglip")


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory) -> Path:
    """The tiny CLIP trained on coloured shapes (about 40 s, once per session)."""
    return cached_shapes_clip(tmp_path_factory.mktemp("trained"))


def write_shapes_folder(root: Path, per_combo: int = 2, seed: int = 5000, size: int = 64) -> list[dict]:
    """A plain image folder with metadata.jsonl captions; returns one dict per image in sorted-path order."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(root / "metadata.jsonl", "w") as sidecar:
        for color in COLORS:
            for shape in SHAPES:
                for k in range(per_combo):
                    # PNG: the same pixels the shapes model was trained on (no JPEG artifacts at 64 px)
                    name = f"{color}-{shape}-{k}.png"
                    draw_shape(color, shape, size=size, seed=seed + len(rows)).save(root / name)
                    sidecar.write(json.dumps({"file_name": name, "caption": caption_for(color, shape)}) + "\n")
                    rows.append({"file_name": name, "color": color, "shape": shape})
    return sorted(rows, key=lambda r: r["file_name"])


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("shapes") / "gallery"
    return root, write_shapes_folder(root)


def write_coco_dir(root: Path, counts: dict[str, int], size: int = 64, bad: bool = True) -> dict[int, dict]:
    """Official COCO layout with captions_*.json and instances_*.json; a few broken files when `bad`."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    truth, next_id = {}, 1000
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        images, captions, instances = [], [], []
        for k in range(count):
            color, shape = combos[k % len(combos)]
            image_id, next_id = next_id, next_id + 7
            name = f"{image_id:012d}.jpg"
            draw_shape(color, shape, size=size, seed=image_id).save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size,
                           "coco_url": f"http://images.cocodataset.org/{split}/{name}"})
            for n in range(2):
                captions.append({"id": len(captions) + 1, "image_id": image_id,
                                 "caption": caption_for(color, shape, seed=n)})
            instances.append({"id": len(instances) + 1, "image_id": image_id,
                              "category_id": SHAPE_CATEGORY_IDS[shape]})
            truth[image_id] = {"split": split, "color": color, "shape": shape, "file_name": name}
        if bad:
            broken = {"truncated": truncated_jpeg(), "empty": b"", "not-an-image": b"hello, I am text\n" * 20}
            for label, payload in broken.items():
                image_id, next_id = next_id, next_id + 7
                name = f"{image_id:012d}.jpg"
                (root / split / name).write_bytes(payload)
                images.append({"id": image_id, "file_name": name, "width": size, "height": size, "coco_url": ""})
                truth[image_id] = {"split": split, "bad": label, "file_name": name}
            image_id, next_id = next_id, next_id + 7  # listed in the annotations, missing on disk
            images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 1, "height": 1})
            truth[image_id] = {"split": split, "bad": "missing", "file_name": f"{image_id:012d}.jpg"}
        categories = [{"id": i, "name": s, "supercategory": "shape"} for s, i in SHAPE_CATEGORY_IDS.items()]
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": captions}))
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": instances, "categories": categories}))
    return truth


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    draw_shape("red", "circle", size=64, seed=1).save(buffer, format="JPEG")
    return buffer.getvalue()[:300]


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("coco") / "coco"
    return root, write_coco_dir(root, {"train2017": 40, "val2017": 20})


def run_build(*args: str) -> int:
    """The builder CLI in-process (same code path as `python -m builder.build`)."""
    from builder.build import main

    return main(["--quiet", "--num-workers", "0", *map(str, args)])


@pytest.fixture(scope="session")
def shapes_artifacts(tmp_path_factory, shapes_model, shapes_folder) -> Path:
    """A finished artifact folder: the shapes gallery embedded with the trained shapes model."""
    out = tmp_path_factory.mktemp("built") / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", shapes_model, "--out", out, "--batch-size", "8") == 0
    return out


HUB_TOKEN = "hf_test_write_token"


@pytest.fixture
def hermetic_hf(monkeypatch, tmp_path):
    """The real huggingface_hub client, isolated from this machine: no Xet, no stored token, private cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub(hermetic_hf, monkeypatch):
    """A Hub-compatible server on 127.0.0.1; module-level client helpers are pointed at it."""
    from hub_server import HubServer

    with HubServer() as server:
        server.patch_client(monkeypatch)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="session")
def app_server(shapes_artifacts, tmp_path_factory):
    """The real app (service + Gradio UI) on a free loopback port, serving the shapes artifacts."""
    import os

    from clipsearch.service import Settings, start
    from clipsearch.ui import build_ui, launch

    os.environ["CLIPSEARCH_CACHE"] = str(tmp_path_factory.mktemp("app-cache"))
    service = start(Settings(index_dir=str(shapes_artifacts), index_repo="unused/unused", index_revision=None,
                             endpoint=None, token=None))
    demo = build_ui(service)
    launch(demo, service, prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo.local_url.rstrip("/"), service
    demo.close()


@pytest.fixture(scope="module")
def client(app_server):
    """A gradio_client Client of the in-process app (one per test module)."""
    from gradio_client import Client

    return Client(app_server[0], verbose=False)

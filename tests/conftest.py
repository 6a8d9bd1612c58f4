"""Shared fixtures: tiny checkpoints, the trained shapes model, synthetic galleries and built artifact sets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Builds in tests never reach for the real Karpathy split (tests that need it point CLIPSEARCH_KARPATHY at a fixture).
os.environ.setdefault("CLIPSEARCH_KARPATHY", "off")

from testkit.galleries import write_coco_dir, write_shapes_folder  # noqa: E402
from testkit.helpers import run_build  # noqa: E402
from testkit.models import cached_shapes_clip, save_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", "clip")


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-siglip", "siglip")


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory) -> Path:
    """The tiny CLIP trained on coloured shapes: from the persistent cache (trained there first, about 40 s, when no
    run has made it with this recipe), copied so that no test can change the cached folder."""
    return Path(shutil.copytree(cached_shapes_clip(), tmp_path_factory.mktemp("trained") / "shapes-clip"))


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("shapes") / "gallery"
    return root, write_shapes_folder(root)


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("coco") / "coco"
    return root, write_coco_dir(root, {"train2017": 40, "val2017": 20})


@pytest.fixture(scope="session")
def shapes_artifacts(tmp_path_factory, shapes_model, shapes_folder) -> Path:
    """A finished artifact folder: the shapes gallery embedded with the trained shapes model."""
    out = tmp_path_factory.mktemp("built") / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", shapes_model, "--out", out, "--batch-size", "8") == 0
    return out


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
    from testkit.hub import HubServer

    with HubServer() as server:
        server.patch_client(monkeypatch)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="session")
def app_server(shapes_artifacts, tmp_path_factory):
    """The real app (service + Gradio UI) on a free loopback port, serving the shapes artifacts."""
    from clipsearch.serve.service import Settings, start
    from clipsearch.web.ui import build_ui, launch

    os.environ["CLIPSEARCH_CACHE"] = str(tmp_path_factory.mktemp("app-cache"))
    service = start(Settings(index_dir=str(shapes_artifacts), index_repo="unused/unused", index_revision=None,
                             endpoint=None, token=None))
    demo = build_ui(service)
    launch(demo, service, prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo.local_url.rstrip("/"), service
    demo.close()


@pytest.fixture
def measured_app(shapes_artifacts, tmp_path):
    """The real app (`python app.py`) serving the shapes artifacts in a process of its own, for memory measurements
    that nothing run before in the test process can skew (testkit.helpers.memory)."""
    from testkit.helpers.memory import measured_app as start

    with start(shapes_artifacts, tmp_path) as app:
        yield app


@pytest.fixture(scope="module")
def client(app_server):
    """A gradio_client Client of the in-process app (one per test module)."""
    from gradio_client import Client

    return Client(app_server[0], verbose=False)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (one per test module), for the browser and accessibility tests."""
    from playwright.sync_api import sync_playwright

    from testkit.browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` (Debian's Chromium; "
                    "do not use `playwright install`)", pytrace=False)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, app_server):
    """Open the app in a fresh context at a given viewport; uncaught page errors fail the test."""
    from playwright.sync_api import expect

    from testkit.browser import WAIT

    url, _ = app_server
    contexts, errors = [], []

    def opener(viewport: dict):
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(WAIT)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/", wait_until="domcontentloaded")
        expect(page.get_by_label("Describe the image")).to_be_visible(timeout=WAIT)
        return page

    yield opener
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"

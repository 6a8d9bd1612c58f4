"""The app through its real API: gradio_client in-process, and `python app.py` started against a loopback Hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from testkit.galleries import truncated_jpeg
from testkit.helpers import app_env, kinds, publish_artifacts, start_app, stop_app
from testkit.models import draw_shape


def test_text_search_returns_the_right_ids_and_honours_k(client, app_server):
    gallery, hits = client.predict("a red circle", 2, api_name="/search_text")
    assert kinds(app_server[1], hits) == ["red-circle", "red-circle"]
    assert {"image_id", "score", "caption"} <= set(hits[0]) and hits[0]["caption"] == "a red circle"
    assert len(gallery) == 2 and Path(gallery[0]["image"]).read_bytes()[:2] == b"\xff\xd8"  # a JPEG thumbnail
    for k in (1, 7, 50):
        _, hits = client.predict("a green square", k, api_name="/search_text")
        assert len(hits) == min(k, len(app_server[1].searcher.gallery))


def test_image_search_and_more_like_this(client, app_server, tmp_path):
    query = tmp_path / "query.png"
    draw_shape("blue", "square", size=64, seed=31337).save(query)
    _, hits = client.predict(handle_file(str(query)), 3, api_name="/search_image")
    assert kinds(app_server[1], hits)[0] == "blue-square"
    _, similar = client.predict(hits[0]["image_id"], 4, api_name="/search_similar")
    assert len(similar) == 4 and similar[0]["image_id"] == hits[0]["image_id"]
    assert similar[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("args, api, message", [
    (("   ", 5), "/search_text", "Please type a description"),
    (("", 5), "/search_text", "Please type a description"),
    ((123456789, 5), "/search_similar", "Pick a result first"),
])
def test_bad_queries_get_a_sentence(client, args, api, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name=api)


@pytest.mark.parametrize("payload, message", [
    (b"", "The file is empty"),
    (b"plain text, not a picture\n" * 20, "not an image"),
    (truncated_jpeg(), "damaged or truncated"),
])
def test_unusable_uploads_get_a_sentence(client, tmp_path, payload, message):
    path = tmp_path / "upload.jpg"
    path.write_bytes(payload)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(path)), 3, api_name="/search_image")


def test_the_server_keeps_serving_after_bad_input(client, app_server):
    for bad in ("", "\x00\x01\x02", "🙂" * 300, "长城 " * 200, "مرحبا بالعالم"):
        try:
            client.predict(bad, 3, api_name="/search_text")
        except Exception:  # noqa: BLE001 - empty text is refused; the rest must be answered
            assert not bad.strip("\x00\x01\x02 ")
    _, hits = client.predict("a yellow triangle", 1, api_name="/search_text")
    assert kinds(app_server[1], hits) == ["yellow-triangle"]


# --- `python app.py` against a Hub-compatible loopback server ------------------------------------------------------
def test_startup_from_the_hub_then_from_cache_when_it_is_down(hub, tmp_path, shapes_artifacts):
    repo = "tester/shapes-index"
    published = publish_artifacts(hub, shapes_artifacts, repo)
    env = app_env(hub, tmp_path, repo)
    process, url = start_app(env, tmp_path / "online.log")
    try:
        assert url.startswith("http"), url
        log = (tmp_path / "online.log").read_text()
        assert f"downloading {repo} at {published.tag}" in log and "ready: 40 images" in log
        _, hits = Client(url, verbose=False).predict("a red circle", 1, api_name="/search_text")
        assert hits[0]["caption"] == "a red circle"
    finally:
        stop_app(process)

    hub.stop()  # the Hub is unreachable: the verified cached copy is served, and the app says so
    process, url = start_app(env, tmp_path / "offline.log")
    try:
        assert url.startswith("http"), url
        log = (tmp_path / "offline.log").read_text()
        assert f"serving the cached copy of {repo} at revision {published.commit[:12]}" in log
        _, hits = Client(url, verbose=False).predict("a red circle", 1, api_name="/search_text")
        assert hits[0]["caption"] == "a red circle"
    finally:
        stop_app(process)

    env["HF_HUB_CACHE"] = str(tmp_path / "empty-hf")  # nothing cached and no Hub: a clear error, no traceback
    process, message = start_app(env, tmp_path / "nothing.log")
    assert process.returncode not in (0, None), message
    assert "no copy of tester/shapes-index is cached" in message and "INDEX_DIR" in message


def test_tampered_artifacts_are_refused(hub, tmp_path, shapes_artifacts):
    repo = "tester/tampered-index"
    publish_artifacts(hub, shapes_artifacts, repo)
    hub.corrupt(repo, "embeddings.npy")
    env = app_env(hub, tmp_path, repo)
    process, message = start_app(env, tmp_path / "tampered.log")
    assert process.returncode not in (0, None), message
    assert "embeddings.npy" in message and "does not match the sha256 in the manifest" in message
    assert "Traceback" not in message


def test_a_newer_format_version_is_refused_with_a_sentence(tmp_path, shapes_artifacts):
    folder = tmp_path / "future"
    folder.mkdir()
    for path in shapes_artifacts.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    manifest = (folder / "manifest.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (folder / "manifest.json").write_text(manifest)
    process, message = start_app({"INDEX_DIR": str(folder)} | {"CLIPSEARCH_CACHE": str(tmp_path / "c")},
                                  tmp_path / "future.log")
    assert process.returncode not in (0, None)
    assert "format_version 99" in message and "update the app" in message


def test_search_is_offered_as_mcp_tools(app_server):
    import httpx

    from clipsearch.web.ui import build_ui, launch

    demo = build_ui(app_server[1])
    launch(demo, app_server[1], prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, mcp_server=True)
    try:
        tools = {tool["name"]: tool for tool in httpx.get(demo.local_url + "gradio_api/mcp/schema").json()}
    finally:
        demo.close()
    assert {"search_text", "search_image", "search", "search_similar"} <= set(tools)
    assert "best match a description" in tools["search_text"]["description"]
    assert "plain words" in tools["search_text"]["inputSchema"]["properties"]["text"]["description"]


def test_the_query_precision_comes_from_the_environment_and_a_wrong_one_is_named():
    from clipsearch.core.encoder import EncoderError
    from clipsearch.serve.service import Settings

    assert Settings.from_env({}).precision == "auto"
    assert Settings.from_env({"CLIPSEARCH_PRECISION": "fp32"}).precision == "fp32"
    with pytest.raises(EncoderError, match=r"CLIPSEARCH_PRECISION='fp8': choose one of auto, fp32, bf16, int8"):
        Settings.from_env({"CLIPSEARCH_PRECISION": "fp8"})

"""Security: no pickle anywhere in loading, models from safetensors only, no path out of the thumbnails, no token in
logs, pages or artifacts."""

from __future__ import annotations

import ast
import http.client
import json
import os
import pickle
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client

from clipsearch.core.manifest import EMBEDDINGS, MANIFEST, ArtifactError, sha256_file
from clipsearch.serve.download import open_gallery
from testkit import ROOT
from testkit.helpers import Trap, app_env, publish_artifacts, run_build, start_app, stop_app

REPO = "tester/reliable-index"


LOADING_CODE = sorted([*(ROOT / "clipsearch").rglob("*.py"), *(ROOT / "builder").glob("*.py"), ROOT / "app.py"])
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_no_pickle_anywhere_in_loading():
    problems = []
    for path in LOADING_CODE:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(str(n).split(".")[0] in UNSAFE_MODULES for n in names if n):
                    problems.append(f"{where}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle", "loads") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("pd", "pandas", "pickle"):
                problems.append(f"{where}:{node.lineno} {node.value.id}.{node.attr}")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            for name, bad in (("allow_pickle", True), ("trust_remote_code", True), ("weights_only", False),
                              ("use_safetensors", False)):
                if name in keywords and isinstance(keywords[name], ast.Constant) and keywords[name].value is bad:
                    problems.append(f"{where}:{node.lineno} {func}({name}={bad})")
            if func == "torch.load" or func.endswith(".torch.load"):
                problems.append(f"{where}:{node.lineno} torch.load")
            if func in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno} np.load without allow_pickle=False")
            if func.endswith("from_pretrained") and func.split(".")[0].startswith("AutoModel"):
                flag = keywords.get("use_safetensors")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}:{node.lineno} {func} without use_safetensors=True")
    assert not problems, problems


def test_models_load_from_safetensors_only(tiny_clip, tmp_path):
    from clipsearch.core.encoder import Encoder, EncoderError

    marker = tmp_path / "unpickled"
    both = tmp_path / "with-a-planted-bin"
    shutil.copytree(tiny_clip, both)
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    Encoder.load(str(both), device="cpu")  # the safetensors weights; the .bin is never opened
    assert not marker.exists()

    bin_only = tmp_path / "bin-only"
    shutil.copytree(both, bin_only)
    for weights in bin_only.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(EncoderError) as refused:
        Encoder.load(str(bin_only), device="cpu")
    assert not marker.exists()
    message = str(refused.value)
    assert message.startswith(f"--model {bin_only}") and "safetensors" in message, message


def test_a_pickled_embeddings_file_is_refused_even_with_a_matching_manifest(shapes_artifacts, tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "evil"
    shutil.copytree(shapes_artifacts, folder, ignore=shutil.ignore_patterns(".*"))
    np.save(folder / EMBEDDINGS, np.array([Trap(marker)] * 3, dtype=object), allow_pickle=True)
    manifest = json.loads((folder / MANIFEST).read_text())  # the attacker controls the manifest too
    manifest["files"][EMBEDDINGS] = {"sha256": sha256_file(folder / EMBEDDINGS),
                                     "size": (folder / EMBEDDINGS).stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="could not be read"):
        open_gallery(index_dir=str(folder), repo_id="unused/unused", revision=None, work_dir=tmp_path / "work")
    assert not marker.exists()


def _traversal_targets(app_server, shapes_model) -> list[str]:
    service = app_server[1]
    artifacts = service.searcher.gallery.folder
    thumbs = service.searcher.gallery.thumbnails.cache_dir
    secret = [artifacts / MANIFEST, artifacts / EMBEDDINGS, artifacts / "index.faiss", Path(shapes_model) /
              "config.json", *Path(shapes_model).glob("*.safetensors"), ROOT / "app.py", Path("/etc/passwd"),
              Path("/proc/self/environ"), thumbs.parent.parent / "verified.json"]
    paths = []
    for target in secret:
        target = str(target)
        quoted = target.replace("/", "%2F")
        up = "../" * 12 + target.lstrip("/")
        paths += [f"/gradio_api/file={target}", f"/gradio_api/file={quoted}", f"/gradio_api/file={up}",
                  f"/gradio_api/file={up.replace('../', '%2e%2e/')}", f"/gradio_api/file={up.replace('/', '%2F')}",
                  f"/gradio_api/file={thumbs}/{up}", f"/gradio_api/file={thumbs}/{up.replace('../', '..%2F')}",
                  f"/gradio_api/file={thumbs}%2F..%2F..%2F..%2F{quoted}", f"/gradio_api/file=/{target}",
                  f"/gradio_api/file={quoted.replace('%', '%25')}", f"/file={target}", f"/gradio_api/file={up}%00.jpg",
                  f"/static/{up}", f"/assets/{up}", f"/gradio_api/upload/{up}", f"/gradio_api/{up}", f"/{up}"]
    return paths


def test_the_app_serves_its_thumbnails_and_nothing_else(app_server, shapes_model):
    url, service = app_server
    host, port = url.split("//", 1)[1].split(":")
    thumbnail = service.searcher.gallery.thumbnails.path(0)

    def get(path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", path)  # sent as written: no client-side normalisation of ../ or %2e
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = get(f"/gradio_api/file={thumbnail}")
    assert status == 200 and body == thumbnail.read_bytes()  # what the gallery shows is served ...
    secrets = {p.read_bytes()[:64] for p in [service.searcher.gallery.folder / n for n in (MANIFEST, EMBEDDINGS)]}
    secrets.add(Path("/etc/passwd").read_bytes()[:32])
    secrets.add((ROOT / "app.py").read_bytes()[:64])
    leaks = []
    for path in _traversal_targets(app_server, shapes_model):  # ... and no other file, however the path is spelt
        status, body = get(path)
        if status not in (400, 403, 404, 405) or any(secret and secret in body for secret in secrets):
            leaks.append((path, status, body[:80]))
    assert not leaks, leaks


def _files_under(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_tokens_never_reach_logs_or_artifacts(hub, monkeypatch, tmp_path, capfd, caplog, tiny_clip, shapes_folder,
                                              shapes_artifacts):
    import logging

    token = "hf_reliabilitySECRETtoken_" + os.urandom(6).hex()
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "out"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "6", "--eval",
                     "none", "--push", "someone/token-index") == 0
    printed = capfd.readouterr()
    assert token in hub.tokens_seen  # it was used ...
    assert token not in printed.out + printed.err + caplog.text  # ... and never shown
    for path in _files_under(out):
        assert token.encode() not in path.read_bytes(), path
    for name, data in hub.files("someone/token-index").items():
        assert token.encode() not in data, name

    publish_artifacts(hub, shapes_artifacts, REPO)
    log = tmp_path / "app.log"
    process, url = start_app(app_env(hub, tmp_path, REPO, HF_TOKEN=token), log)
    try:
        assert url.startswith("http"), url
        with httpx.Client(base_url=url, timeout=30) as http:
            pages = [http.get(p).text for p in ("/", "/config", "/gradio_api/info", "/gradio_api/info?all_endpoints=1")]
        _, hits = Client(url, verbose=False).predict("a red circle", 2, api_name="/search_text")
        assert len(hits) == 2
    finally:
        stop_app(process)
    assert token in hub.tokens_seen[-20:]
    assert token not in log.read_text() and not any(token in page for page in pages)
    for path in _files_under(tmp_path / "app-cache") + _files_under(tmp_path / "hf"):
        assert token.encode() not in path.read_bytes(), path


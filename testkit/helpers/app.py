"""`python app.py` in a subprocess on a free loopback port, serving a loopback Hub's repo or a local index folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from huggingface_hub import HfApi

from builder.publish import push
from clipsearch.core.manifest import Manifest

from .. import HUB_TOKEN, ROOT

# Settings of this machine that must not leak into an app under test (its own come from `env`).
_NOT_INHERITED = ("INDEX_DIR", "INDEX_REPO", "HF_TOKEN", "HF_HUB_CACHE", "HF_HOME")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(env: dict, log: Path, timeout: float = 120,
              command: tuple[str, ...] = ("app.py",)) -> tuple[subprocess.Popen, str]:
    """Start `python <command>` in the repository with `env` on a free port, its output in `log`. Returns (process,
    url) once it serves, or (process, the log's text) when it exited first; raises when it neither serves nor exits
    within `timeout` seconds."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env = {**inherited, **env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_DISABLE_XET": "1", "PYTHONUNBUFFERED": "1"}
    handle = open(log, "w")
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=handle,
                               stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return process, log.read_text()
        if "Running on local URL" in log.read_text():
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.3)
    process.kill()
    raise AssertionError("the app did not start in time:\n" + log.read_text()[-3000:])


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def publish_artifacts(hub, artifacts: Path, repo: str):
    """A built artifact folder published to the loopback Hub as `repo` (one tagged commit)."""
    return push(artifacts, Manifest.read(artifacts), repo, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))


def app_env(hub, tmp_path: Path, repo: str, **extra) -> dict:
    """The environment of an app serving `repo` from the loopback Hub, with its caches in tmp_path."""
    return {"INDEX_REPO": repo, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf"),
            "CLIPSEARCH_CACHE": str(tmp_path / "app-cache"), **extra}

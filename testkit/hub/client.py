"""Pointing the real `huggingface_hub` client (v2.4, checked against its source) at a loopback HubServer."""

# * Environment variables are mostly read ONCE, at import time, in `huggingface_hub/constants.py`:
#     - `HF_ENDPOINT`        -> `constants.ENDPOINT` and `constants.HUGGINGFACE_CO_URL_TEMPLATE` (used by
#                               `hf_hub_url`), `constants.HF_URL_HOSTS` and `utils._http._HUB_ORIGINS`.
#     - `HF_HUB_DISABLE_XET` -> `constants.HF_HUB_DISABLE_XET`.
#     - `HF_HUB_OFFLINE`     -> `constants.HF_HUB_OFFLINE`; it is *checked* at request time through
#                               `constants.is_offline_mode()`, so patching the constant works.
#     - `HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`, `HF_TOKEN_PATH`, `HF_HOME`, ... likewise.
#   Only `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN` are read at call time (`utils/_auth.py`).
#   => `monkeypatch.setenv("HF_ENDPOINT", ...)` inside a test does NOTHING once huggingface_hub is imported.
#
# * The reliable way is to pass `endpoint=server.url` explicitly: `HfApi(endpoint=...)`,
#   `snapshot_download(..., endpoint=...)`, `hf_hub_download(..., endpoint=...)`. `HfApi.endpoint` is captured at
#   construction; `hf_hub_url` builds the URL from the import-time template and then swaps in the explicit endpoint.
#
# * For code that does not take an `endpoint` argument, `patch_client` below patches `constants.ENDPOINT`,
#   `constants.HUGGINGFACE_CO_URL_TEMPLATE` and the module-level `HfApi` instance behind `huggingface_hub.create_commit`
#   & co. (`hf_api.api`, created at import time), plus the env var (for subprocesses).
#
# * Xet: the server never advertises Xet, so the client never takes the Xet path whatever `HF_HUB_DISABLE_XET` says;
#   tests still set it (env var + `constants.HF_HUB_DISABLE_XET`) to be explicit.
#
# * The first `build_hf_headers()` call of a process fetches `{constants.ENDPOINT}/api/agent-harnesses` (3 s timeout)
#   and caches it under HF_HOME; tests pre-seed `huggingface_hub.utils._detect_agent._registry` with an empty
#   registry (the `hermetic_hf` fixture), and the server answers that route with an empty registry too.

from __future__ import annotations


def patch_client(url: str, monkeypatch) -> None:
    """Make huggingface_hub calls WITHOUT `endpoint=` reach `url` for the test's duration (pytest's monkeypatch)."""
    from huggingface_hub import constants, hf_api

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_api.api, "endpoint", url)

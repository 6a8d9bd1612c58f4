"""Raw-HTTP calls of the app's API (what a script or the browser sends), and checks of what a person is shown."""

from __future__ import annotations

import json
from pathlib import Path

import httpx


def call(url: str, endpoint: str, data: list, timeout: float = 60) -> tuple[str, object]:
    """One raw-HTTP API call: ("complete", outputs) or ("refused"/"error", the message the caller is shown)."""
    with httpx.Client(base_url=url, timeout=timeout) as http:
        response = http.post(f"/gradio_api/call/{endpoint}", json={"data": data})
        if response.status_code != 200:
            return f"refused:{response.status_code}", _detail(response)
        event = response.json()["event_id"]
        kind = None
        with http.stream("GET", f"/gradio_api/call/{endpoint}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    payload = json.loads(line[5:])
                    return kind, payload.get("error") if kind == "error" and isinstance(payload, dict) else payload
    raise AssertionError(f"{endpoint}: the result stream ended without a result")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text
    if isinstance(detail, list):  # validators: one entry per parameter
        return " ".join(item.get("message", "") for item in detail if not item.get("is_valid", True))
    return str(detail)


def upload(url: str, path: Path) -> dict:
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes())})
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def search_data(url: str, **values) -> list:
    """Positional data for /search from its published parameter list, so new optional inputs need no test edits."""
    with httpx.Client(base_url=url, timeout=30) as http:
        parameters = http.get("/gradio_api/info").json()["named_endpoints"]["/search"]["parameters"]
    blank = {"text": "", "images": [], "negative": "", "more_like": [], "less_like": []}
    return [values.get(p["parameter_name"], p["parameter_default"] if p["parameter_has_default"]
                       else blank.get(p["parameter_name"])) for p in parameters]


def assert_sentence(message: object) -> None:
    """What a person is shown: a sentence saying what was wrong, never a bare 'Error' or a traceback."""
    text = str(message or "")
    assert len(text) > 20 and text.strip().lower() not in ("error", "none"), text
    assert "Traceback" not in text and text.rstrip().endswith((".", ")")), text


def kinds(service, hits) -> list[str]:
    """'blue-square' for each hit (the gallery's file names are <colour>-<shape>-<n>.png)."""
    gallery = service.searcher.gallery
    return [gallery.rows([gallery.row_of(h["image_id"])])[0].file_name.rsplit("-", 1)[0] for h in hits]

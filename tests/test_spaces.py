"""The Space's deployment material: the card's front matter, the deploy file set, and `spaces/` never importable."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import gradio
import yaml

from clipsearch.core.encoder import DEFAULT_MODEL
from testkit import ROOT
from testkit.deploy import load_deploy

deploy = load_deploy()


def test_card_front_matter_is_complete_and_pinned():
    text = (ROOT / "spaces" / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__
    assert front["app_file"] == "app.py" and front["suggested_hardware"] == "cpu-basic"
    assert str(front["python_version"]).startswith("3.")
    # the card names (and preloads) the model the builder's default builds the index with
    assert front["models"][0] == DEFAULT_MODEL and front["preload_from_hub"][0].startswith(DEFAULT_MODEL + " ")
    assert len(front["short_description"]) <= 60
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"gradio[mcp]=={gradio.__version__}" in requirements


def test_deploy_uploads_exactly_what_the_space_needs(hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test_write_token")
    deploy.deploy("tester/space", api=api)
    files = hub.files("tester/space", repo_type="space")
    expected = {"app.py", "requirements.txt", "README.md"} | {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "clipsearch").rglob("*") if p.suffix in (".py", ".js")}
    assert "clipsearch/web/static/atlas.js" in expected  # the atlas's script is served by the app
    assert set(files) - {".gitattributes"} == expected
    assert files["README.md"] == (ROOT / "spaces" / "README.md").read_bytes()
    # The Space gets the repo's pins plus PyTorch's CPU index; the repo's own file (local and CI installs) is unchanged.
    space_lines = files["requirements.txt"].decode().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in space_lines
    assert [line for line in space_lines if not line.startswith(("#", "--"))] == [
        line for line in (ROOT / "requirements.txt").read_text().splitlines()
        if not line.startswith("#") and not line.endswith("# builder only")]
    assert not any(line.startswith("openTSNE") for line in space_lines)  # the builder's t-SNE: never in the Space
    assert "download.pytorch.org" not in (ROOT / "requirements.txt").read_text()
    assert not any(name.startswith(("spaces/", "tests/", "builder/")) for name in files)


def test_spaces_folder_is_not_an_importable_package():
    assert not (ROOT / "spaces" / "__init__.py").exists()
    # On a Space the real `spaces` package is installed in site-packages, later on sys.path than the app folder.
    # A regular package always beats a namespace folder, so with a stand-in installed, `import spaces` from the
    # repo root must get the stand-in, never our folder.
    # `python -c` puts the repo root (cwd) first on sys.path, as `python app.py` puts the app folder; PYTHONPATH adds
    # the stand-in after it, where an installed package sits.
    probe = "import spaces; print(getattr(spaces, '__file__', None), hasattr(spaces, 'gradio_auto_wrap'))"
    stand_in = ROOT / "test-artifacts" / "site"
    (stand_in / "spaces").mkdir(parents=True, exist_ok=True)
    (stand_in / "spaces" / "__init__.py").write_text("def gradio_auto_wrap(fn):\n    return fn\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(stand_in)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(stand_in / "spaces" / "__init__.py"), "True"]
    # And where no real package exists, nothing named spaces is a module or regular package in the app's folder.
    spec = importlib.util.find_spec("spaces") if importlib.util.find_spec("spaces") else None
    assert spec is None or spec.origin not in (str(ROOT / "spaces" / "__init__.py"), str(ROOT / "spaces.py"))


def _fake_wheel(folder, version: str):
    """A minimal valid wheel named torch at `version` (what pip reads to resolve; never installed)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_pip_takes_the_cpu_build_when_both_indexes_serve_the_pinned_torch(tmp_path):
    """What the Space's pip does with the deployed file, replayed offline: PyPI serves torch 2.13.0 (CUDA), PyTorch's
    CPU index 2.13.0+cpu; the repo's pin torch==2.13.0 must resolve to the CPU build."""
    import json

    pin = next(line for line in deploy.space_requirements().decode().splitlines() if line.startswith("torch=="))
    _fake_wheel(tmp_path / "pypi", pin.split("==")[1])
    _fake_wheel(tmp_path / "cpu-index", pin.split("==")[1] + "+cpu")
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--quiet",
                    "--find-links", str(tmp_path / "pypi"), "--find-links", str(tmp_path / "cpu-index"),
                    "--ignore-installed", "--report", str(report), pin], check=True, capture_output=True)
    chosen = json.loads(report.read_text())["install"][0]["metadata"]["version"]
    assert chosen == pin.split("==")[1] + "+cpu"

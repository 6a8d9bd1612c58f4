"""The Space's deployment material: the card's front matter, the deploy file set, and `spaces/` never importable."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import gradio
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "spaces"))
import deploy  # noqa: E402  (spaces/deploy.py, loaded by path: spaces/ itself is not a package)


def test_card_front_matter_is_complete_and_pinned():
    text = (ROOT / "spaces" / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__
    assert front["app_file"] == "app.py" and front["suggested_hardware"] == "cpu-basic"
    assert str(front["python_version"]).startswith("3.")
    assert front["preload_from_hub"][0].startswith(front["models"][0])
    assert len(front["short_description"]) <= 60
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"gradio[mcp]=={gradio.__version__}" in requirements


def test_deploy_uploads_exactly_what_the_space_needs(hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test_write_token")
    deploy.deploy("tester/space", api=api)
    files = hub.files("tester/space", repo_type="space")
    expected = {"app.py", "requirements.txt", "README.md"} | {
        f"clipsearch/{p.name}" for p in (ROOT / "clipsearch").glob("*.py")}
    assert set(files) - {".gitattributes"} == expected
    assert files["README.md"] == (ROOT / "spaces" / "README.md").read_bytes()
    assert not any(name.startswith(("spaces/", "tests/", "builder/")) for name in files)


def test_spaces_folder_is_not_an_importable_package():
    assert not (ROOT / "spaces" / "__init__.py").exists()
    # On a Space the real `spaces` package is installed in site-packages, later on sys.path than the app folder.
    # A regular package always beats a namespace folder, so with a stand-in installed, `import spaces` from the
    # repo root must get the stand-in, never our folder.
    probe = ("import sys, importlib; sys.path.insert(0, '.'); sys.path.append(sys.argv[1]); "
             "import spaces; print(getattr(spaces, '__file__', None), hasattr(spaces, 'gradio_auto_wrap'))")
    stand_in = ROOT / "test-artifacts" / "site"
    (stand_in / "spaces").mkdir(parents=True, exist_ok=True)
    (stand_in / "spaces" / "__init__.py").write_text("def gradio_auto_wrap(fn):\n    return fn\n")
    out = subprocess.run([sys.executable, "-c", probe, str(stand_in)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(stand_in / "spaces" / "__init__.py"), "True"]
    # And where no real package exists, nothing named spaces is a module or regular package in the app's folder.
    spec = importlib.util.find_spec("spaces") if importlib.util.find_spec("spaces") else None
    assert spec is None or spec.origin not in (str(ROOT / "spaces" / "__init__.py"), str(ROOT / "spaces.py"))

"""spaces/deploy.py, loaded from its path: spaces/ is never an importable package (see tests/test_spaces.py)."""

from __future__ import annotations

import importlib.util

from . import ROOT


def load_deploy():
    spec = importlib.util.spec_from_file_location("spaces_deploy", ROOT / "spaces" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

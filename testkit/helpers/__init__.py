"""Plain helpers shared by the test files (fixtures live in tests/conftest.py)."""

# Modules, by concern:
# - app.py       `python app.py` in a subprocess (against a loopback Hub or a local index), started and stopped
# - api.py       raw-HTTP calls of the app's API, as a script or a browser makes them, and what a person is shown
# - memory.py    resident memory: of this process, and of an app in a process of its own, read settled
# - payloads.py  crafted bytes: broken and oversized images, a pickle that betrays being unpickled
# - builds.py    the builder CLI in-process, two builds compared file by file, a build in an older layout

from .api import assert_sentence, call, kinds, search_data, upload
from .app import app_env, free_port, publish_artifacts, start_app, stop_app
from .builds import NOT_BUILT, assert_same_build, run_build, serving_copy_in_one_file
from .memory import MeasuredApp, measured_app, process_rss_mb, rss_mb
from .payloads import UNUSABLE, Trap, encoded, png_chunk, png_claiming

__all__ = [
    "NOT_BUILT", "UNUSABLE", "MeasuredApp", "Trap", "app_env", "assert_same_build", "assert_sentence", "call",
    "encoded", "free_port", "kinds", "measured_app", "png_chunk", "png_claiming", "process_rss_mb", "publish_artifacts",
    "rss_mb", "run_build", "search_data", "serving_copy_in_one_file", "start_app", "stop_app", "upload",
]

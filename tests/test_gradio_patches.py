"""The workarounds of Gradio's internals in clipsearch.web.gradio_patches: per-session component configs computed lazily
(each equal to what Gradio computes), a cap on kept sessions, so raw-HTTP calls do not pile up memory, and the
warning when the installed gradio is not the one they were written for."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from testkit.helpers import call


def test_lazy_session_configs_equal_what_gradio_computes(app_server):
    """gradio_patches makes Gradio's per-session component configs lazy; every one must equal Gradio's own."""
    from gradio.state_holder import SessionState

    from clipsearch.web.gradio_patches import _LazyConfigValues
    from clipsearch.web.ui import build_ui

    blocks = build_ui(app_server[1])
    session = SessionState(blocks)
    assert isinstance(session.config_values, _LazyConfigValues)
    first_key = next(iter(blocks.blocks))
    assert first_key in session.config_values and len(session.config_values) == len(blocks.blocks)
    config = blocks.default_config
    eager = {key: config.config_for_block(key, [], block) for key, block in config.blocks.items()
             if key in blocks.blocks}
    assert dict(session.config_values.items()) == eager
    session.config_values[first_key] = {"replaced": True}
    assert session.config_values[first_key] == {"replaced": True}


def test_api_schemas_are_computed_once_per_data_model_and_stay_each_components_own():
    """Every gr.update in an answer is a new component asking for its API schema; the patch computes it once per
    data model. A single and a multiple gr.File have different models and must keep different schemas."""
    import gradio as gr
    from gradio.components.base import Component

    from clipsearch.web.gradio_patches import shared_api_schemas

    shared_api_schemas()
    shared_api_schemas()  # installing twice keeps one layer
    original = Component.api_info.original
    assert not getattr(original, "shared", False)
    makers = [gr.Gallery, lambda: gr.Gallery(label="another"), lambda: gr.File(file_count="single"),
              lambda: gr.File(file_count="multiple"), gr.Image]
    for make in makers:
        assert make().api_info() == original(make())  # a fresh instance: Gradio's own computation
    assert makers[0]().api_info() is makers[1]().api_info()
    assert makers[2]().api_info() != makers[3]().api_info()


@pytest.mark.memory
def test_raw_api_calls_do_not_pile_up_sessions(measured_app):
    """Every raw-HTTP call is a new Gradio session holding a copy of the UI's config (~135 KB); only the newest 500
    are kept (gradio_patches.SESSION_CAPACITY), so a steady stream of calls reaches a ceiling instead of growing
    ~1.3 GB. Measured on `python app.py` in a process of its own, whatever this test process ran before."""
    url = measured_app.url

    def calls(first: int, count: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            kinds_ = list(pool.map(lambda n: call(url, "search_text", [f"a green cross {n}", 1])[0],
                                   range(first, first + count)))
        assert set(kinds_) == {"complete"}

    calls(0, 650)  # fills the session store
    before = measured_app.rss_mb()
    calls(1000, 500)
    grown = measured_app.rss_mb() - before
    assert grown < 30, f"resident memory grew {grown:.0f} MB over 500 more calls"


@pytest.mark.parametrize("installed, warned", [("6.31.0", False), ("6.31.7", False), ("6.32.0", True), ("7.0.1", True)])
def test_version_guard_warns_only_for_another_gradio(monkeypatch, caplog, installed, warned):
    """The patches were read from one gradio: another major.minor gets one warning naming them, and still starts."""
    import gradio

    from clipsearch.web import gradio_patches

    monkeypatch.setattr(gradio, "__version__", installed)
    with caplog.at_level("WARNING", logger="clipsearch.web.gradio_patches"):
        assert gradio_patches.check_version() is not warned
    messages = [r.getMessage() for r in caplog.records if r.name == "clipsearch.web.gradio_patches"]
    assert len(messages) == int(warned)
    if warned:
        assert installed in messages[0] and gradio_patches.WRITTEN_FOR in messages[0]
        assert "lazy_session_configs" in messages[0] and "ThumbnailFiles" in messages[0]

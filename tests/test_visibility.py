"""Publishing never widens visibility: without --private or --public no visibility is sent (a namespace's private
default holds), and an existing repo's visibility is never changed, by --push and by spaces/deploy.py alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi

from builder.publish import push
from clipsearch.core.manifest import Manifest
from testkit import HUB_TOKEN
from testkit.deploy import load_deploy
from testkit.helpers import run_build

ORG = "acme"  # an organisation whose new repos are private unless the create request says otherwise


deploy = load_deploy()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip, shapes_folder) -> Path:
    out = tmp_path_factory.mktemp("visibility") / "out"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "3",
                     "--eval", "none") == 0
    return out


@pytest.fixture
def org_hub(hub):
    hub.private_by_default.add(ORG)
    return hub


def _private(hub, repo_id: str, repo_type: str = "dataset") -> bool:
    return hub.storage.get_repo(repo_type, repo_id).private


def _sent(hub, repo_id: str) -> list[dict]:
    """The create requests the server received for `repo_id`."""
    return [p for p in hub.create_requests if f"{p.get('organization') or hub.user}/{p['name']}" == repo_id]


def _settings_calls(hub) -> list:
    return [r for r in hub.requests if r.path.rstrip("/").endswith("/settings")]


def test_a_push_without_flags_sends_no_visibility_and_the_orgs_private_default_holds(org_hub, monkeypatch, tmp_path,
                                                                                     tiny_clip, shapes_folder):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    out = tmp_path / "out"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "3", "--eval",
                     "none", "--push", f"{ORG}/index") == 0
    (request,) = _sent(org_hub, f"{ORG}/index")
    assert "visibility" not in request and "private" not in request, request
    assert _private(org_hub, f"{ORG}/index") is True
    assert HfApi(endpoint=org_hub.url, token=HUB_TOKEN).dataset_info(f"{ORG}/index").private is True


@pytest.mark.parametrize("visibility, private", [("public", False), ("private", True)])
def test_a_new_repo_gets_the_visibility_asked_for(org_hub, built, visibility, private):
    api = HfApi(endpoint=org_hub.url, token=HUB_TOKEN)
    push(built, Manifest.read(built), f"{ORG}/{visibility}-index", api=api, visibility=visibility)
    (request,) = _sent(org_hub, f"{ORG}/{visibility}-index")
    assert request["visibility"] == visibility
    assert _private(org_hub, f"{ORG}/{visibility}-index") is private


def test_the_public_flag_reaches_the_hub(org_hub, monkeypatch, tmp_path, tiny_clip, shapes_folder):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", tmp_path / "out", "--limit", "3",
                     "--eval", "none", "--push", f"{ORG}/open-index", "--public") == 0
    assert _private(org_hub, f"{ORG}/open-index") is False


@pytest.mark.parametrize("was_private, asked", [(True, "public"), (False, "private"), (True, None)])
def test_an_existing_repos_visibility_is_never_changed(org_hub, built, caplog, was_private, asked):
    api = HfApi(endpoint=org_hub.url, token=HUB_TOKEN)
    repo = f"{ORG}/existing"
    org_hub.create_repo(repo, private=was_private)
    push(built, Manifest.read(built), repo, api=api, visibility=asked)
    assert _private(org_hub, repo) is was_private
    assert _sent(org_hub, repo) == [] and _settings_calls(org_hub) == []  # nothing about visibility was sent
    assert org_hub.commit_count(repo) == 2  # the build was published all the same
    if asked:
        assert f"{repo} already exists: its visibility is left as it is" in caplog.text


def test_private_and_public_together_are_refused_with_a_sentence(tmp_path, capsys, shapes_folder):
    with pytest.raises(SystemExit) as ended:
        run_build("--images", shapes_folder[0], "--out", tmp_path / "out", "--push", "me/x", "--private", "--public")
    assert ended.value.code == 2
    assert "--private and --public contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_deploy_sends_no_visibility_unless_asked_and_never_changes_an_existing_space(org_hub, capsys):
    api = HfApi(endpoint=org_hub.url, token=HUB_TOKEN)
    deploy.deploy(f"{ORG}/space", api=api)
    (request,) = _sent(org_hub, f"{ORG}/space")
    assert "visibility" not in request and "private" not in request, request
    assert _private(org_hub, f"{ORG}/space", "space") is True
    deploy.deploy(f"{ORG}/open-space", api=api, visibility="public")
    assert _private(org_hub, f"{ORG}/open-space", "space") is False
    deploy.deploy(f"{ORG}/space", api=api, visibility="public")  # a redeploy asking for public
    assert _private(org_hub, f"{ORG}/space", "space") is True
    assert len(_sent(org_hub, f"{ORG}/space")) == 1 and _settings_calls(org_hub) == []
    assert "already exists: its visibility is left as it is" in capsys.readouterr().err


def test_deploy_refuses_private_and_public_together(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    with pytest.raises(SystemExit) as ended:
        deploy.main(["me/space", "--private", "--public"])
    assert ended.value.code == 2 and "--private and --public contradict each other" in capsys.readouterr().err

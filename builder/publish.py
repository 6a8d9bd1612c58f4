"""Publish stage: every artifact file to a Hub dataset repo in one atomic commit, then a tag the app can pin."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token, hf_hub_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from clipsearch.core.errors import first_line
from clipsearch.core.manifest import MANIFEST, TAG_PREFIX, ArtifactError, Manifest
from clipsearch.core.published import KARPATHY, format_recall, recall_label, recall_results, skipped_karpathy
from clipsearch.hub.errors import hub_unreachable

log = logging.getLogger(__name__)

CARD = "README.md"
# The card's first line after its front matter says who wrote it: a README without it is the owner's, never replaced.
CARD_MARKER = "<!-- written by python -m builder.build; replaced by every push -->"


class PublishError(RuntimeError):
    """A push that did not happen; the message names the flag or variable that fixes it."""


@dataclass
class Published:
    repo_id: str
    commit: str
    tag: str
    url: str


def require_token() -> str:
    token = get_token()
    if not token:
        raise PublishError("--push needs a Hub token with write access: set HF_TOKEN or run `hf auth login`.")
    return token


def new_tag(now: datetime | None = None) -> str:
    """build-YYYYMMDD-HHMMSS-ffffff: tags sort by time as text, so the app's 'latest build' is simply the greatest
    tag name; microseconds keep two pushes in the same second apart."""
    return TAG_PREFIX + (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S-%f")


def push(out: Path, manifest: Manifest, repo_id: str, *, api: HfApi | None = None,
         visibility: str | None = None) -> Published:
    """One commit holding every file the manifest lists, the manifest and a dataset card naming the build tag.

    `visibility` ("private" or "public") applies only to a repo this push creates; None sends none, so the Hub gives
    a new repo its namespace's default (an organisation may make every new repo private). An existing repo's
    visibility is never changed. The card changes with every push, so every push is a real commit checked against
    `parent_commit` (the client would otherwise skip an unchanged set and report whatever commit is at the head,
    possibly someone else's).
    """
    api = api or HfApi()
    out = Path(out)
    try:
        _ensure_repo(api, repo_id, "dataset", visibility)
        parent = api.dataset_info(repo_id, revision="main").sha if _has_commits(api, repo_id) else None
        current = set(api.list_repo_files(repo_id, repo_type="dataset", revision=parent)) if parent else set()
        previous = _previous_build(api, repo_id, parent) if MANIFEST in current else set()
        own_card = CARD not in current or _card_is_ours(api, repo_id, parent)
    except HfHubHTTPError as error:
        raise PublishError(f"--push {repo_id}: the Hub refused access ({first_line(error)}); check the repo id and "
                           "that HF_TOKEN has write access.") from None
    except Exception as error:  # noqa: BLE001 - network failures become a sentence; anything else is re-raised
        if not hub_unreachable(error):
            raise
        raise PublishError(f"--push {repo_id}: the Hub could not be reached ({first_line(error)}); nothing was "
                           "published. Check the network (or HF_ENDPOINT) and re-run with --push.") from None
    tag = new_tag()
    operations = _operations(out, manifest, repo_id, tag, parent, own_card, previous & current)
    log.info("pushing %d files to %s as one commit (parent %s)", len(manifest.files) + 1, repo_id,
             (parent or "none")[:12])
    commit = _commit(api, repo_id, operations, parent, f"Index build {tag}: {manifest.count} images, "
                     f"{manifest.model['model_id']}")
    try:
        api.create_tag(repo_id, tag=tag, revision=commit, repo_type="dataset")
    except Exception as error:  # noqa: BLE001 - Hub refusals and network failures become a sentence
        if not (isinstance(error, HfHubHTTPError) or hub_unreachable(error)):
            raise
        raise PublishError(f"--push {repo_id}: commit {commit[:12]} holds the complete build, but tagging it {tag} "
                           f"failed ({first_line(error)}), so the app keeps serving the previous build. Re-run with "
                           "--push.") from None
    return Published(repo_id=repo_id, commit=commit, tag=tag,
                     url=f"{api.endpoint}/datasets/{repo_id}/tree/{tag}")


def _ensure_repo(api: HfApi, repo_id: str, repo_type: str, visibility: str | None) -> None:
    """Create the repo if it does not exist, with `visibility` only when one was asked for (None: the namespace's
    default holds). An existing repo is left exactly as it is: nothing is sent to it, its visibility included."""
    if repo_exists(api, repo_id, repo_type):
        if visibility is not None:
            log.warning("%s already exists: its visibility is left as it is (--%s applies only to a new repo)",
                        repo_id, visibility)
        return
    api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, visibility=visibility)


def repo_exists(api: HfApi, repo_id: str, repo_type: str) -> bool:
    """Whether the repo exists (gated or private ones this token cannot read included), asked with a refs listing."""
    try:
        api.list_repo_refs(repo_id, repo_type=repo_type)
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    return True


def _operations(out: Path, manifest: Manifest, repo_id: str, tag: str, parent: str | None, own_card: bool,
                previous: set[str]) -> list:
    """Every file the manifest lists, the manifest, our card (never the owner's) and the deletions: only the previous
    build's own files (its manifest lists them) that this build no longer has; whatever else the repo holds belongs
    to its owner and stays."""
    names = sorted(manifest.files) + [MANIFEST]
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(out / name)) for name in names]
    if own_card:
        operations.append(CommitOperationAdd(path_in_repo=CARD,
                                             path_or_fileobj=dataset_card(manifest, repo_id, tag, parent).encode()))
    else:
        log.warning("%s in %s was not written by the builder: left as it is", CARD, repo_id)
    return operations + [CommitOperationDelete(path_in_repo=name) for name in sorted(previous - set(names))]


def _commit(api: HfApi, repo_id: str, operations: list, parent: str | None, message: str) -> str:
    """The one commit of a push, against `parent`; its failures as sentences."""
    try:
        return api.create_commit(repo_id, operations, repo_type="dataset", parent_commit=parent,
                                 commit_message=message).oid
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (409, 412):
            raise PublishError(f"--push {repo_id}: the repo changed while this build was being published (another "
                               "push won the race); nothing was changed by this one. Re-run with --push.") from None
        raise PublishError(f"--push {repo_id}: the commit was refused ({first_line(error)}).") from None
    except Exception as error:  # noqa: BLE001 - network failures become a sentence; anything else is re-raised
        if not hub_unreachable(error):
            raise
        # The answer was lost, not necessarily the commit: either way the repo holds one complete set, and without
        # the build tag the app keeps serving the previous build.
        raise PublishError(f"--push {repo_id}: the connection to the Hub was lost during the commit "
                           f"({first_line(error)}); the repo holds either the previous build or this one, complete, "
                           "and the app keeps serving the previous one. Re-run with --push to publish this build."
                           ) from None


def dataset_card(manifest: Manifest, repo_id: str, tag: str, parent: str | None) -> str:
    evaluation = ""
    for name, result in recall_results(manifest.evaluation):
        evaluation += (f"- recall on {recall_label(name, result)}: text→image "
                       f"{format_recall(result['text_to_image'])}; "
                       f"image→text {format_recall(result['image_to_text'])}\n")
        if published := result.get("published"):
            evaluation += (f"  - published ([{published['source']}]({published['source_url']}), "
                           f"{published['reference']}): text→image {format_recall(published['text_to_image'])}; "
                           f"image→text {format_recall(published['image_to_text'])}\n"
                           f"  - {'⚠️ ' if published['flagged'] else ''}{published['note']}\n")
    if reason := skipped_karpathy(manifest.evaluation):
        evaluation += f"- recall on {KARPATHY}: not measured ({reason})\n"
    return (
        "---\nlicense: cc-by-4.0\npretty_name: COCO CLIP search index\ntags:\n- clip\n- faiss\n"
        f"- image-retrieval\n---\n{CARD_MARKER}\n"
        f"# {repo_id}\n\nSearch index built by `python -m builder.build` for COCO CLIP visual search. "
        f"This commit is tagged `{tag}` and replaces `{parent or 'nothing'}`.\n\n"
        f"- model: `{manifest.model['model_id']}` @ `{manifest.model.get('revision')}`"
        + ("" if manifest.model.get("has_text", True) else " (image-only: image → image search, no text side)")
        + "\n"
        f"- images: {manifest.count:,}; dim {manifest.dim}; index {manifest.index.factory} "
        f"(recall@5 vs exact {manifest.index.recall_at_5:.4f})\n{evaluation}"
        f"- built {manifest.created_at} by builder `{manifest.builder_version}`\n\n"
        "`manifest.json` lists every other file with its sha256; the app verifies them before serving. "
        "COCO annotations are CC BY 4.0; images keep their Flickr licenses.\n"
    )


def _previous_build(api: HfApi, repo_id: str, commit: str) -> set[str]:
    """The files the repo's current build wrote: its manifest and what that manifest lists."""

    folder = Path(hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision=commit, endpoint=api.endpoint,
                                  token=api.token)).parent
    try:
        return {MANIFEST, *Manifest.read(folder).files}
    except ArtifactError:  # a manifest.json of another kind: nothing in the repo is known to be ours
        return set()


def _card_is_ours(api: HfApi, repo_id: str, commit: str) -> bool:

    card = Path(hf_hub_download(repo_id, CARD, repo_type="dataset", revision=commit, endpoint=api.endpoint,
                                token=api.token)).read_text(encoding="utf-8", errors="replace")
    # Cards of builds before the marker existed start their body with this sentence.
    return CARD_MARKER in card or "Search index built by `python -m builder.build`" in card


def _has_commits(api: HfApi, repo_id: str) -> bool:
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    return any(branch.name == "main" for branch in refs.branches)

"""Model files from the Hub: which files of a model repo the encoder loads, fetched by exact name at one commit."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from ..core.errors import EncoderError, first_line
from .errors import hub_unreachable

log = logging.getLogger(__name__)

# What is fetched from a Hub repo: exactly the files transformers loads, by name (never patterns: laion's repos hold
# open_clip_model.safetensors beside model.safetensors, and every *.bin / *.h5 / *.msgpack copy is left alone).
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded checkpoints: the index, then exactly the shards it names
CONFIG_FILE = "config.json"
# The processor and tokenizer files of every CLIP-family layout; only those the repo has are fetched. Both the
# sentencepiece model and tokenizer.json come when a repo has both (SigLIP 2): which one loads depends on the class.
PROCESSOR_FILES = (
    "preprocessor_config.json", "processor_config.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "tokenizer.model", "sentencepiece.bpe.model",
)
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")  # never fetched, never opened
# The Hub's automatic conversion: a bot opens a pull request adding model.safetensors (what transformers'
# safetensors_conversion.py looks for; only this author is trusted, as there).
CONVERSION_BOT = "SFconvertbot"
CONVERSION_TITLE = "Adding `safetensors` variant of this model"


def resolve_model(model_id: str, revision: str | None = None, weights: bool = True) -> tuple[Path, str | None]:
    """Return a local folder for a model id or path, and the commit its files come from (None for local folders).

    From the Hub only the files transformers loads are fetched, by exact name, all from one commit. When that
    revision has pickled weights only, the Hub's safetensors conversion pull request of that same revision is
    used instead, and its commit is the one returned (so loading again by it gives the same bytes). Without
    `weights`, only the config and processor files are fetched (the app loading a build's serving copy)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local, None
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:  # a path, not a Hub id
        raise EncoderError(f"--model {model_id}: no such folder. Pass an existing model folder or a Hub model id.")
    api = HfApi()
    with _sentences(model_id, revision):
        # Cache-aware: writes refs/<revision> for offline use later, and answers from it when the Hub is down.
        commit = api.resolve_revision(model_id, revision=revision).resolved
        try:
            info = api.model_info(model_id, revision=commit, files_metadata=True)
        except Exception as error:  # noqa: BLE001 - only 'the Hub cannot be reached' falls back to the cache
            if not hub_unreachable(error):
                raise
            return _cached_snapshot(model_id, commit, weights), commit
        commit, names = _files_to_fetch(api, model_id, revision, info)
        if not weights:
            names = [name for name in names if name not in (WEIGHTS_FILE, WEIGHTS_INDEX)]
        return _fetch(model_id, commit, names), commit


@contextlib.contextmanager
def _sentences(model_id: str, revision: str | None):
    """The Hub's refusals and network failures as an EncoderError saying what to do; anything else propagates."""
    try:
        yield
    except (RepositoryNotFoundError, GatedRepoError):
        raise EncoderError(
            f"--model {model_id}: no such model on the Hub (or it is private or gated: set HF_TOKEN)."
        ) from None
    except RevisionNotFoundError:
        raise EncoderError(f"--model {model_id}: it has no revision {revision!r}; pass an existing branch, tag or "
                           "commit with --model-revision.") from None
    except RevisionResolutionError:
        raise EncoderError(
            f"--model {model_id}: not in the local cache and the Hub cannot be reached; "
            "connect to the Hub once or pass a local model folder."
        ) from None
    except EncoderError:
        raise
    except HfHubHTTPError as error:
        if hub_unreachable(error):
            raise EncoderError(f"--model {model_id}: the Hub cannot be reached ({first_line(error)}); try again "
                               "later or pass a local model folder.") from None
        raise EncoderError(f"--model {model_id}: the Hub refused the download ({first_line(error)}).") from None
    except Exception as error:  # noqa: BLE001 - network failures become a sentence; anything else propagates
        if not hub_unreachable(error):
            raise
        raise EncoderError(f"--model {model_id}: the Hub cannot be reached ({type(error).__name__}); try again "
                           "later or pass a local model folder.") from None


def _files_to_fetch(api, model_id: str, revision: str | None, info) -> tuple[str, list[str]]:
    """The commit to download from and the exact names to fetch there (a sharded index's shards come later)."""
    files = {sibling.rfilename: sibling for sibling in info.siblings or []}
    where = f"revision {revision}" if revision else "main"
    if CONFIG_FILE not in files:
        extra = " (it ships OpenCLIP files only)" if any(n.startswith("open_clip") for n in files) else ""
        raise EncoderError(f"--model {model_id}: the repo has no transformers {CONFIG_FILE} at {where}{extra}; "
                           "pass a transformers CLIP-family checkpoint.")
    commit = info.sha
    weights = _safetensors_weights(files)
    if weights is None:
        found = _conversion_pull_request(api, model_id, files)
        if found is None:
            pickled = sorted(n for n in files if n.endswith(PICKLED_SUFFIXES)) or ["none"]
            raise EncoderError(
                f"--model {model_id}: the repo has no safetensors weights at {where} (only {', '.join(pickled)}) "
                "and no safetensors conversion pull request, and the encoder refuses pickled weights; pass a "
                "model that has model.safetensors."
            )
        number, info = found
        files = {sibling.rfilename: sibling for sibling in info.siblings or []}
        weights = _safetensors_weights(files)
        log.info("%s has no safetensors weights at %s: the weights (and configs) come from the safetensors "
                 "conversion ref refs/pr/%d, commit %s", model_id, where, number, info.sha)
        commit = info.sha
    return commit, [CONFIG_FILE, *weights, *(name for name in PROCESSOR_FILES if name in files)]


def _safetensors_weights(files) -> list[str] | None:
    """The weights file transformers loads from a folder of these names (with use_safetensors), if any."""
    for name in (WEIGHTS_FILE, WEIGHTS_INDEX):
        if name in files:
            return [name]
    return None


def _conversion_pull_request(api, model_id: str, base: dict):
    """(number, ModelInfo at its head) of the open SFconvertbot pull request that converts exactly this revision,
    or None. As transformers' safetensors_conversion does, only the bot's PR titled CONVERSION_TITLE counts; instead
    of requiring its parent to be main's head, its head must hold the same config, processor files and pickled
    weights (same blob ids) as the revision asked for, so the safetensors are that revision's weights and the
    configs loaded beside them are byte-identical. A stale conversion (of an older main) is skipped."""
    kept = [n for n in base if n == CONFIG_FILE or n in PROCESSOR_FILES or n.endswith(PICKLED_SUFFIXES)]
    try:
        for pr in api.get_repo_discussions(model_id, author=CONVERSION_BOT, discussion_type="pull_request",
                                           discussion_status="open"):
            if not (pr.is_pull_request and pr.status == "open" and pr.author == CONVERSION_BOT
                    and pr.title == CONVERSION_TITLE):
                continue
            head = api.model_info(model_id, revision=pr.git_reference, files_metadata=True)
            files = {sibling.rfilename: sibling for sibling in head.siblings or []}
            same = all(n in files and files[n].blob_id == base[n].blob_id for n in kept)
            if same and _safetensors_weights(files) is not None:
                return pr.num, head
            log.info("%s: refs/pr/%d (%s) does not convert this revision; skipped", model_id, pr.num, pr.title)
    except HfHubHTTPError as error:  # discussions disabled, ... : no conversion to use
        if hub_unreachable(error):
            raise
        log.warning("%s: could not list pull requests (%s)", model_id, first_line(error))
    return None


def _fetch(model_id: str, commit: str, names: list[str]) -> Path:
    """Download exactly `names` (and, for a sharded index, the shards it lists) at `commit`; the snapshot folder."""
    paths = [Path(hf_hub_download(model_id, name, revision=commit)) for name in names]
    folder = paths[0].parent  # config.json is at the root
    if WEIGHTS_INDEX in names:
        index = json.loads((folder / WEIGHTS_INDEX).read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards or any(not s.endswith(".safetensors") or ".." in s.split("/") for s in shards):
            raise EncoderError(f"--model {model_id}: {WEIGHTS_INDEX} lists no usable safetensors shards; pass a "
                               "model whose index names its shard files.")
        for shard in shards:
            hf_hub_download(model_id, shard, revision=commit)
    return folder


def _cached_snapshot(model_id: str, commit: str, weights: bool = True) -> Path:
    """The Hub cannot be reached: the cached snapshot of `commit`, if it holds a config (and safetensors weights,
    unless `weights` is False)."""
    config = try_to_load_from_cache(model_id, CONFIG_FILE, revision=commit)
    folder = Path(config).parent if isinstance(config, str) else None
    if folder is None or weights and _safetensors_weights({p.name for p in folder.iterdir()}) is None:
        raise EncoderError(
            f"--model {model_id}: not in the local cache and the Hub cannot be reached; "
            "connect to the Hub once or pass a local model folder."
        )
    log.warning("the Hub cannot be reached; using the cached %s at %s", model_id, commit[:12])
    return folder

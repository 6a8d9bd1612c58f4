"""The trained shapes models (the CLIP, the bilingual SigLIP), kept in a persistent cache folder keyed by a hash of
their recipe, so each trains once."""

# Training takes up to ~40 s on a busy machine; every fresh test run used to pay it. The folder name carries a hash
# of everything that decides the weights, so a changed recipe trains a new model instead of reusing a stale one:
# - the recipe's name (which trainer: "shapes-clip", "bilingual-siglip");
# - the source of the modules that make the data, the tokenizer, the config and the training loop (shapes.py,
#   tokenization.py, checkpoints.py, training.py: any edit there retrains, comments included, which is cheap and
#   never wrong);
# - the arguments (seed, image size);
# - the versions of the packages that compute it (torch, transformers, tokenizers, numpy, Pillow).
# The time limit is left out: a run it cut short is never cached.

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from . import checkpoints, shapes, tokenization, training
from .training import MARKER_FILE, train_bilingual_siglip, train_shapes_clip

logger = logging.getLogger(__name__)

CACHE_ENV = "CLIPSEARCH_TEST_CACHE"  # overrides the cache folder (default: $XDG_CACHE_HOME/clipsearch-testkit)
_RECIPE_MODULES = (shapes, tokenization, checkpoints, training)
_RECIPE_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pillow", "sentencepiece")
# The trainers by recipe name (the cached folder's name starts with it).
RECIPES = {"shapes-clip": train_shapes_clip, "bilingual-siglip": train_bilingual_siglip}


def cache_root() -> Path:
    """Where trained models are kept between runs: $CLIPSEARCH_TEST_CACHE, else ~/.cache/clipsearch-testkit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipsearch-testkit"


def recipe_key(seed: int = 0, image_size: int = 32, recipe: str = "shapes-clip") -> str:
    """16 hex digits of a hash of everything that decides a shapes model's weights (see the module notes)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    digest = hashlib.sha256()
    versions = {name: metadata.version(name) for name in _RECIPE_PACKAGES}
    digest.update(json.dumps({"recipe": recipe, "seed": seed, "image_size": image_size, "versions": versions},
                             sort_keys=True).encode())
    for module in _RECIPE_MODULES:
        digest.update(module.__name__.encode() + b"\0" + Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _exclusive(lock_file: Path):
    """Hold an exclusive lock on `lock_file`: a second run waits for the first one's model instead of training too."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_shapes_clip(cache_dir=None, seconds: float = 900, seed: int = 0) -> Path:
    """The trained shapes CLIP folder `<cache>/shapes-clip-<recipe key>`, trained first when no run has made it
    (see `_cached`). Treat the folder as read-only (copy it to change it)."""
    return _cached("shapes-clip", cache_dir, seconds, seed)


def cached_bilingual_siglip(cache_dir=None, seconds: float = 900, seed: int = 0) -> Path:
    """The tiny SigLIP 2-style model trained on English and Russian captions (training.train_bilingual_siglip), as
    `<cache>/bilingual-siglip-<recipe key>`, trained first when no run has made it (about 30 s on one core). Treat the
    folder as read-only (copy it to change it)."""
    return _cached("bilingual-siglip", cache_dir, seconds, seed)


def _cached(recipe: str, cache_dir, seconds: float, seed: int) -> Path:
    """`<cache>/<recipe>-<recipe key>`, trained by RECIPES[recipe] when missing.

    Trained in a temporary folder beside it and renamed into place once complete, so a reader never sees half a
    model; the rename is the only way a folder gets that name.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"{recipe}-{recipe_key(seed, recipe=recipe)}"
    if (final / MARKER_FILE).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{final.name}.lock"):
        if (final / MARKER_FILE).exists():  # trained by another run while this one waited
            return final
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
        try:
            RECIPES[recipe](scratch, seconds=seconds, seed=seed)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        report = json.loads((scratch / MARKER_FILE).read_text())
        if not report["converged"] and report["steps"] < training.MAX_STEPS:
            logger.warning("%s stopped by the %.0f s limit: used by this run only, not cached", recipe, seconds)
            return scratch
        scratch.chmod(0o755)  # mkdtemp makes it private; the finished model is read by every run
        try:
            scratch.rename(final)
        except OSError:  # another run (without working locks) renamed its own copy first: same recipe, same model
            shutil.rmtree(scratch, ignore_errors=True)
        return final

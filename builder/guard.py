"""The --out guard: the names a build owns in its folder, and the checks made there before any work."""

from __future__ import annotations

import re
from pathlib import Path

from clipsearch.core.atlas import ATLAS
from clipsearch.core.manifest import (
    EMBEDDINGS,
    IMAGE_GRAPH,
    IMAGE_TOWER_FILE,
    INDEX,
    MANIFEST,
    METADATA,
    OBJECTS_INDEX,
    OBJECTS_META,
    OBJECTS_VECTORS,
    SERVING_MODEL,
    TEXT_GRAPH,
    TEXT_TOWER_FILE,
    ArtifactError,
    Manifest,
)

from .errors import BuildError
from .plan import BuildPlan
from .publish import require_token

WORK = ".work"  # the resume cache of a build (see builder.resume); not an artifact, never published
APPEND_WORK = ".work-append"  # the resume cache and staging folder of an --append (see builder.append)
# Everything a build may create in --out besides its artifacts: the resume caches, huggingface_hub's download
# metadata (--base) and the app's thumbnail files; check_out_folder refuses a folder holding anything else.
OWN_FOLDERS = (WORK, APPEND_WORK, ".cache", ".thumbs", ".write-test")
THUMBS_RE = re.compile(r"thumbs-\d{5}\.bin")


def check_before_work(plan: BuildPlan) -> None:
    """Before any work: --out holds nothing foreign and is writable, and a --push has its token."""
    check_out_folder(plan.out, images=plan.images)
    check_writable(plan.out)
    if plan.push_repo is not None:
        require_token()  # fail before hours of embedding, not after


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise BuildError(f"--out {out} is not writable ({error.strerror or error}); choose another --out.") from None


def artifact_names(out: Path) -> list[str]:
    """The files in `out` that a build of ours wrote, by their known names: what a rebuild may replace."""
    names = {MANIFEST, INDEX, EMBEDDINGS, METADATA, ATLAS, OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS,
             SERVING_MODEL, IMAGE_GRAPH, TEXT_GRAPH, IMAGE_TOWER_FILE, TEXT_TOWER_FILE}
    names.update(p.name for p in out.glob("thumbs-*.bin") if THUMBS_RE.fullmatch(p.name))
    try:
        names.update(Manifest.read(out).files)  # older builds may have listed other names
    except (ArtifactError, OSError, ValueError):
        pass
    return sorted(name for name in names if (out / name).is_file())


def check_out_folder(out: Path, *, images: Path | None = None) -> None:
    """Refuse an --out that holds anything this builder did not write: a rebuild replaces only its own files, so a
    user's document or photo is never deleted, overwritten, listed in the manifest or pushed."""
    if images is not None and out.resolve() == images.resolve():
        raise BuildError(f"--out {out} is the --images folder itself; write the index to its own folder "
                         f"(e.g. --out {out.name}-index), so that no picture can be overwritten.")
    if not out.is_dir():
        return
    ours = set(artifact_names(out)) | set(OWN_FOLDERS)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BuildError(f"--out {out} holds files this builder did not write ({shown}); nothing was changed. "
                         "Choose an empty or new folder for --out.")
    if ours - set(OWN_FOLDERS) and not holds_build(out):
        raise BuildError(f"--out {out} holds {', '.join(sorted(ours - set(OWN_FOLDERS))[:3])} but no build of ours "
                         "(no manifest.json, no .work/); nothing was changed. Choose an empty or new folder for --out.")


def holds_build(out: Path) -> bool:
    """A finished build, or one of ours under way (a resume cache of a build or of an --append)."""
    return (out / MANIFEST).is_file() or (out / WORK).is_dir() or (out / APPEND_WORK).is_dir()


def clear_artifacts(out: Path) -> None:
    """Remove the previous build's files by name (check_out_folder has proved them ours). The manifest goes first:
    from here until the new one is written, the folder is not a complete build."""
    (out / MANIFEST).unlink(missing_ok=True)
    for name in artifact_names(out):
        (out / name).unlink()

"""The builder CLI: `python -m builder.build [--push [REPO_ID]]`: load, embed, pack, index, evaluate, publish."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import torch

from clipsearch.core.encoder import DEFAULT_MODEL, Encoder, EncoderError
from clipsearch.core.manifest import (
    DEFAULT_INDEX_REPO,
    EMBEDDINGS,
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    METADATA,
    ArtifactError,
    Manifest,
    ThumbnailInfo,
    hash_files,
    write_manifest,
)
from clipsearch.core.precision import BUILD_MIN_COSINE, PRECISIONS
from clipsearch.core.published import KARPATHY, format_recall, recall_label, recall_results, skipped_karpathy
from clipsearch.hub.models import load_encoder

from .distributed import Group, Ranks, rank_threads
from .embed import THUMB_SIDE, embed_shards, shard_ranges
from .evaluate import evaluate
from .index import AUTO, IndexBuildError, build_index
from .pack import pack
from .plan import BuildPlan
from .publish import PublishError, push, require_token
from .sources import (
    DEFAULT_HF_CAPTIONS,
    DEFAULT_HF_IMAGES,
    DEFAULT_SPLITS,
    CocoDirSource,
    HubCocoSource,
    ImageFolderSource,
    Source,
    SourceError,
    keeps_coco_ids,
)

log = logging.getLogger("builder")
WORK = ".work"  # resume cache inside --out; not an artifact, never published
# Everything a build may create in --out besides its artifacts: the resume caches and huggingface_hub's download
# metadata (--base) and the app's thumbnail files; check_out_folder refuses a folder holding anything else.
OWN_FOLDERS = (WORK, ".work-append", ".cache", ".thumbs", ".write-test")
THUMBS_RE = re.compile(r"thumbs-\d{5}\.bin")
USER_ERRORS = (SourceError, EncoderError, ArtifactError, PublishError, IndexBuildError)


class BuildError(ValueError):
    """A build that cannot start or finish; the message names the flag that fixes it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m builder.build",
        description="Embed an image gallery with a CLIP-family model and write (and optionally push) a search index.",
        epilog="Several GPUs or nodes: launch the same command with torchrun (or accelerate launch), e.g. "
               "'torchrun --nproc_per_node 8 -m builder.build ...': each process embeds its share of the shards "
               "and rank 0 writes one index; across nodes --out must be shared storage (see builder/distributed.py).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--coco-dir", type=Path, help="local COCO: DIR/<split>/*.jpg + DIR/annotations/*_<split>.json")
    where.add_argument("--images", type=Path, help="any folder of images (recursive); captions optional")
    parser.add_argument("--splits", default=",".join(DEFAULT_SPLITS), help="COCO splits (default %(default)s)")
    parser.add_argument("--hf-images", default=DEFAULT_HF_IMAGES, help="Hub dataset with images, ids, categories "
                        "(REPO[@REVISION]; default %(default)s)")
    parser.add_argument("--hf-captions", default=DEFAULT_HF_CAPTIONS, help="Hub dataset with captions and urls, "
                        "joined by image id (REPO[@REVISION]; '' for none; default %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="CLIP-family checkpoint (text and image search) or "
                        "an image-only model such as facebook/dinov2-small (image search only): Hub id or folder "
                        "(default %(default)s; alternative: openai/clip-vit-base-patch32)")
    parser.add_argument("--model-revision", default=None, help="branch, tag or commit of --model")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="artifact folder (default %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                        help="CPU encoder: auto (default: int8, or bf16 where the CPU has AMX, kept only if its "
                        f"vectors agree with fp32 at cosine >= {BUILD_MIN_COSINE} on a calibration batch, else fp32), "
                        "int8, bf16 (the same check) or fp32 (the reference); CUDA always uses bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default 256 GPU, 32 CPU)")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes (default: cores-1, max 16)")
    parser.add_argument("--shard-size", type=int, default=4096, help="images per resumable shard")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick trial builds)")
    parser.add_argument("--index", default=AUTO, help="'auto' (default: exact 'Flat' up to 20k vectors, "
                        "HNSW32 over fp16 up to 500k, IVF lists with 8-bit codes above, search effort tuned to "
                        "recall@5 >= 0.985 against exact), or any FAISS factory string such as 'Flat' or 'HNSW32'")
    parser.add_argument("--index-params", default="", help="search-time FAISS parameters, e.g. 'nprobe=32'")
    parser.add_argument("--eval", default="auto", choices=["auto", "none", "val", "full"],
                        help="caption recall: val (5k), full (also whole gallery); auto = full on GPU, val on CPU")
    parser.add_argument("--fresh", action="store_true", help="discard the resume cache and start over")
    parser.add_argument("--append", action="store_true", help="add the source's new images to the build in --out "
                        "(embeds only those; old rows, ids and thumbnails stay); with --base, start from a published "
                        "build")
    parser.add_argument("--base", metavar="REPO[@REV]", help="with --append: download this published index into --out "
                        "first")
    parser.add_argument("--push", nargs="?", const="", default=None, metavar="REPO_ID",
                        help=f"publish to a Hub dataset repo (default: $INDEX_REPO or {DEFAULT_INDEX_REPO})")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private (with --push)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the summary")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "num_workers", "shard_size", "limit"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "num_workers" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be a positive number (got {value})")
    return args


def make_source(args: argparse.Namespace) -> Source:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.images:
        return ImageFolderSource(args.images)
    if args.coco_dir:
        return CocoDirSource(args.coco_dir, splits)
    return HubCocoSource(args.hf_images, args.hf_captions or None, splits)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise BuildError(f"--out {out} is not writable ({error.strerror or error}); choose another --out.") from None


def prepare_work(out: Path, settings: dict, fresh: bool) -> Path:
    """The resume cache: reused only when every setting that shapes the result is the same."""
    work = out / WORK
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    config = work / "settings.json"
    if config.exists():
        previous = json.loads(config.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise BuildError(f"--out {out} holds a partial build with other settings ({', '.join(changed)}); "
                             "re-run with the same arguments to resume, or add --fresh to start over.")
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(settings, indent=1, sort_keys=True))
    return work


def artifact_names(out: Path) -> list[str]:
    """The files in `out` that a build of ours wrote, by their known names: what a rebuild may replace."""
    names = {MANIFEST, INDEX, EMBEDDINGS, METADATA}
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
    has_build = (out / MANIFEST).is_file() or (out / WORK).is_dir() or (out / ".work-append").is_dir()
    if ours - set(OWN_FOLDERS) and not has_build:
        raise BuildError(f"--out {out} holds {', '.join(sorted(ours - set(OWN_FOLDERS))[:3])} but no build of ours "
                         "(no manifest.json, no .work/); nothing was changed. Choose an empty or new folder for --out.")


def clear_artifacts(out: Path) -> None:
    """Remove the previous build's files by name (check_out_folder has proved them ours). The manifest goes first:
    from here until the new one is written, the folder is not a complete build."""
    (out / MANIFEST).unlink(missing_ok=True)
    for name in artifact_names(out):
        (out / name).unlink()


def builder_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args: argparse.Namespace) -> Manifest | None:
    """One build. Under torchrun / accelerate launch every process runs this (see builder.distributed): each embeds
    its own shards, and rank 0 alone finishes the build and returns the manifest; the other ranks return None."""
    ranks = Ranks.from_env()
    if args.append:
        if ranks.distributed:  # every rank would append the same images to the same folder at once
            raise BuildError("--append runs in one process: launch it with python -m builder.build, not torchrun.")
        return run_append(args)
    with Group(ranks) as group:
        return _run(args, ranks, group)


def _run(args: argparse.Namespace, ranks: Ranks, group: Group) -> Manifest | None:
    started = time.perf_counter()
    try:
        plan, source, encoder, work = _start(args, ranks, group)
        shards = len(shard_ranges(len(source.records), plan.shard_size))
        mine = ranks.shards(shards)
        log.info("stage 3/6 embed: %d images, batch %d, %d workers, %s%s", len(source.records), plan.batch_size,
                 plan.workers, plan.device, f", {len(mine)} of {shards} shards on this rank" if ranks.distributed
                 else "")
        speed = embed_shards(source, encoder, work, batch_size=plan.batch_size, shard_size=plan.shard_size,
                             num_workers=plan.workers, shards=mine, progress=ranks.main)
    except Exception as error:
        group.gather({"error": f"rank {ranks.rank}: {type(error).__name__}: {error}"})  # rank 0 says why, then ends
        raise
    speeds = group.gather(speed)  # also the barrier: every shard is on disk once this returns
    if not ranks.main:
        return None  # rank 0 finishes the build
    failed = [s["error"] for s in speeds if "error" in s]
    if failed:
        raise BuildError(f"{'; '.join(failed)}. Finished shards are kept: re-run the same command to resume.")
    if ranks.distributed:
        speed = _combined(speeds)
        _use_every_core()  # the other ranks are done; indexing and evaluation get the whole node
    return _finish(plan, source, encoder, work, shards, speed, started)


def _start(args: argparse.Namespace, ranks: Ranks, group: Group) -> tuple[BuildPlan, Source, Encoder, Path]:
    """All multi-process setup: rank 0 checks, downloads (into the caches the other ranks then read) and resets
    --out before anyone embeds, a failure reaching the other ranks as a message, not a hang; each other rank then
    loads the same gallery and model and checks that it sees rank 0's build. One process is rank 0 of one."""
    if (threads := rank_threads(ranks)) is not None:
        torch.set_num_threads(threads)  # ranks sharing a node split its cores instead of oversubscribing them
    if ranks.main:
        try:
            _check_out(args)
            plan, source, encoder = _load(args, ranks)
            settings = plan.fingerprint(source, encoder)
            work = prepare_work(plan.out, settings, plan.fresh)
            clear_artifacts(plan.out)
        except Exception as error:
            group.broadcast({"error": f"{type(error).__name__}: {error}"})
            raise
        group.broadcast({"settings": settings})
        return plan, source, encoder, work
    ready = group.broadcast(None)
    if "error" in ready:
        raise BuildError(f"rank 0 could not start the build ({ready['error']}).")
    plan, source, encoder = _load(args, ranks)
    return plan, source, encoder, _joined_work(plan.out, plan.fingerprint(source, encoder), ready["settings"])


def _finish(plan: BuildPlan, source: Source, encoder: Encoder, work: Path, shards: int, speed: dict,
            started: float) -> Manifest:
    """Stages 4-6 on rank 0 once every shard is embedded: pack, index, evaluate, manifest, summary, push."""
    out = plan.out
    log.info("stage 4/6 pack: thumbnails and metadata")
    packed = pack(source, work, out, shards, encoder.info.dim)
    log.info("stage 5/6 index: %s over %d vectors", plan.index_factory, len(packed.vectors))
    index, index_info = build_index(packed.vectors, plan.index_factory, plan.index_params)
    faiss.write_index(index, str(out / INDEX))
    log.info("stage 6/6 evaluate: %s", plan.eval_mode)
    records = [source.records[i] for i in packed.rows]
    evaluation = evaluate(encoder, packed.vectors, [r.captions for r in records], [r.split for r in records],
                          plan.eval_mode, categories=[r.categories for r in records],
                          image_ids=[r.image_id for r in records] if keeps_coco_ids(source.infos) else None)
    names = sorted([INDEX, *packed.files])  # exactly what this build wrote, never a listing of the folder
    manifest = Manifest(
        format_version=FORMAT_VERSION, model=encoder.info.to_dict(), dim=encoder.info.dim, count=len(packed.rows),
        index=index_info, thumbnails=ThumbnailInfo(files=packed.thumb_files, max_side=THUMB_SIDE),
        sources=source.infos, skipped=packed.skipped, evaluation=evaluation, builder_version=builder_version(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 1),
        images_per_second=round(speed["images_per_second"], 1), device=plan.device.type,
        precision=encoder.precision, files=hash_files(out, names),
    )
    write_manifest(out, manifest)
    print(summary(manifest, out, speed))
    _publish(plan, manifest)
    return manifest


def run_append(args: argparse.Namespace) -> Manifest:
    """--append: embed only the new images of the source and add them to the build in --out (one process)."""
    from .append import append, fetch_base

    _check_out(args)
    if args.base:
        log.info("downloading the base build %s into %s", args.base, args.out)
        fetch_base(args.base, args.out)
    if not (args.out / MANIFEST).exists() and not (args.out / ".work-append").exists():
        raise BuildError(f"--append: {args.out} holds no finished build; build it first, pass --base REPO to start "
                         "from a published one, or drop --append.")
    source = make_source(args)
    plan = BuildPlan.from_args(args)
    manifest = append(plan, source, builder_version())
    print(f"\nThe index in {plan.out.resolve()} now holds {manifest.count:,} images.")
    _publish(plan, manifest)
    return manifest


def _check_out(args: argparse.Namespace) -> None:
    """Before any work: --out holds nothing foreign and is writable, and a --push has its token."""
    check_out_folder(args.out, images=args.images)
    check_writable(args.out)
    if args.push is not None:
        require_token()  # fail before hours of embedding, not after


def _publish(plan: BuildPlan, manifest: Manifest) -> None:
    """--push: one commit of the finished build in plan.out, reported in two lines."""
    if plan.push_repo:
        published = push(plan.out, manifest, plan.push_repo, private=plan.private)
        print(f"published {published.repo_id} commit {published.commit[:12]} tag {published.tag}\n  {published.url}")


def _load(args: argparse.Namespace, ranks: Ranks) -> tuple[BuildPlan, Source, Encoder]:
    """The plan and stages 1-2 (gallery listing, model); every rank runs this."""
    plan = BuildPlan.from_args(args, ranks)
    log.info("stage 1/6 load: listing images")
    source = make_source(args)
    if plan.limit:
        source.limit(plan.limit)  # a Hub source then lists, and later fetches, only what the first N images need
    log.info("%d images from %s", len(source.records), ", ".join(i.location for i in source.infos))
    log.info("stage 2/6 model: %s", plan.model)
    # no batch, so no race on AMX: bf16 first, the more exact path for index vectors and the faster on batches
    encoder = load_encoder(plan.model, plan.model_revision, plan.device, precision=plan.precision,
                           min_cosine=BUILD_MIN_COSINE)
    if ranks.main:
        from .sources import estimate_line

        log.info("%s", estimate_line(source, encoder.info.dim))  # before any image byte is fetched
    return plan, source, encoder


def _joined_work(out: Path, mine: dict, main: dict) -> Path:
    """A rank other than 0 checks that it sees the same build and the same folder as rank 0."""
    if mine != main:
        changed = sorted(k for k in set(mine) | set(main) if mine.get(k) != main.get(k))
        raise BuildError(f"this process sees a different build than rank 0 ({', '.join(changed)}): every process "
                         "must be given the same arguments, gallery and model.")
    work = out / WORK
    try:
        shared = json.loads((work / "settings.json").read_text()) == main
    except (OSError, ValueError):
        shared = False
    if not shared:
        raise BuildError(f"--out {out} is not the folder rank 0 prepared: on several nodes, --out must be on "
                         "storage that every node mounts at the same path.")
    return work


def _combined(speeds: list[dict]) -> dict:
    images, seconds = sum(s["images"] for s in speeds), max(s["seconds"] for s in speeds)
    return {"images": images, "seconds": seconds, "images_per_second": images / seconds if seconds else 0.0,
            "processes": len(speeds)}


def _use_every_core() -> None:
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    faiss.omp_set_num_threads(cores)


def summary(manifest: Manifest, out: Path, speed: dict) -> str:
    lines = [
        "",
        f"Built {manifest.count:,} images with {manifest.model['model_id']} (dim {manifest.dim}) "
        f"in {manifest.build_seconds:.0f} s",
        f"  embedding: {speed['images']:,} images this run at {speed['images_per_second']:.1f} images/s "
        f"on {manifest.device} ({manifest.precision})"
        + (f" ({speed['processes']} processes)" if speed.get("processes", 1) > 1 else ""),
        f"  skipped:   {len(manifest.skipped)} image(s)"
        + "".join(f"\n    {s.path}: {s.reason}" for s in manifest.skipped[:10])
        + (f"\n    ... and {len(manifest.skipped) - 10} more (see manifest.json)"
           if len(manifest.skipped) > 10 else ""),
        f"  index:     {manifest.index.factory} ({manifest.index.faiss_type}), recall@5 vs exact "
        f"{manifest.index.recall_at_5:.4f}",
    ]
    if not manifest.model.get("has_text", True):
        lines.append(f"  text side: none ({manifest.model['architecture']} is an image-only model): the app serves "
                     "image -> image search only")
    for name, result in recall_results(manifest.evaluation):
        lines.append(f"  recall ({recall_label(name, result)}): text->image {format_recall(result['text_to_image'])} "
                     f"| image->text {format_recall(result['image_to_text'])}")
        if published := result.get("published"):
            lines.append(f"    published ({published['source']}, {published['reference']}): text->image "
                         f"{format_recall(published['text_to_image'])} | image->text "
                         f"{format_recall(published['image_to_text'])}")
            lines.append(f"    {'FLAGGED' if published['flagged'] else 'ok'}: {published['note']}")
    if reason := skipped_karpathy(manifest.evaluation):
        lines.append(f"  recall ({KARPATHY}): skipped: {reason}")
    if by_category := manifest.evaluation.get("image_to_image_by_category"):
        lines.append(f"  image->image by category ({by_category['queries_from']}, {by_category['images']:,} images): "
                     + " ".join(f"{k} {by_category[k]:.1f}" for k in ("P@1", "P@5", "P@10", "mAP")))
    lines.append(f"  files:     {out.resolve()} ({sum(f.size for f in manifest.files.values()) / 2**20:.1f} MB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    where = Ranks.from_env().label()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {f'[{where}] ' if where else ''}%(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        run(args)
    except (BuildError, *USER_ERRORS) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, permissions changed mid-build: say so, keep the resume cache
        print(f"error: {error.strerror or error} ({error.filename or 'output'}); free space or fix --out, then "
              "re-run the same command to resume.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; re-run the same command to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

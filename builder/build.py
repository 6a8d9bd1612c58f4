"""The builder CLI: `python -m builder.build [--push [REPO_ID]]`: load, embed, pack, index, evaluate, publish."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss

from clipsearch.encoder import DEFAULT_MODEL, Encoder, EncoderError, pick_device
from clipsearch.hub import DEFAULT_INDEX_REPO
from clipsearch.manifest import (
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    ArtifactError,
    Manifest,
    ThumbnailInfo,
    hash_files,
    write_manifest,
)

from .embed import THUMB_SIDE, embed_shards, shard_ranges
from .evaluate import evaluate
from .index import EXACT, IndexBuildError, build_index
from .pack import pack
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
)

log = logging.getLogger("builder")
WORK = ".work"  # resume cache inside --out; not an artifact, never published
USER_ERRORS = (SourceError, EncoderError, ArtifactError, PublishError, IndexBuildError)


class BuildError(ValueError):
    """A build that cannot start or finish; the message names the flag that fixes it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m builder.build",
        description="Embed an image gallery with a CLIP-family model and write (and optionally push) a search index.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--coco-dir", type=Path, help="local COCO: DIR/<split>/*.jpg + DIR/annotations/*_<split>.json")
    where.add_argument("--images", type=Path, help="any folder of images (recursive); captions optional")
    parser.add_argument("--splits", default=",".join(DEFAULT_SPLITS), help="COCO splits (default %(default)s)")
    parser.add_argument("--hf-images", default=DEFAULT_HF_IMAGES, help="Hub dataset with images, ids, categories "
                        "(REPO[@REVISION]; default %(default)s)")
    parser.add_argument("--hf-captions", default=DEFAULT_HF_CAPTIONS, help="Hub dataset with captions and urls, "
                        "joined by image id (REPO[@REVISION]; '' for none; default %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="CLIP-family checkpoint: Hub id or folder "
                        "(default %(default)s; alternative: openai/clip-vit-base-patch32)")
    parser.add_argument("--model-revision", default=None, help="branch, tag or commit of --model")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="artifact folder (default %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default 256 GPU, 32 CPU)")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes (default: cores-1, max 16)")
    parser.add_argument("--shard-size", type=int, default=4096, help="images per resumable shard")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick trial builds)")
    parser.add_argument("--index", default=EXACT, help="FAISS factory string (default exact 'Flat'; e.g. "
                        "'HNSW32', 'IVF4096,Flat' for big galleries: recall@5 vs exact is measured)")
    parser.add_argument("--index-params", default="", help="search-time FAISS parameters, e.g. 'nprobe=32'")
    parser.add_argument("--eval", default="auto", choices=["auto", "none", "val", "full"],
                        help="caption recall: val (5k), full (also whole gallery); auto = full on GPU, val on CPU")
    parser.add_argument("--fresh", action="store_true", help="discard the resume cache and start over")
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


def clear_artifacts(out: Path) -> None:
    """The manifest goes first: from here until the new one is written, the folder is not a complete build."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.iterdir():
        if path.is_file() and path.name != MANIFEST:
            path.unlink()


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


def run(args: argparse.Namespace) -> Manifest:
    started = time.perf_counter()
    out = args.out
    check_writable(out)
    repo_id = None
    if args.push is not None:
        require_token()  # fail before hours of embedding, not after
        repo_id = args.push or os.environ.get("INDEX_REPO") or DEFAULT_INDEX_REPO
    device = pick_device(args.device)
    log.info("stage 1/6 load: listing images")
    source = make_source(args)
    if args.limit:
        source.records = source.records[:args.limit]
    log.info("%d images from %s", len(source.records), ", ".join(i.location for i in source.infos))
    log.info("stage 2/6 model: %s", args.model)
    encoder = Encoder.load(args.model, args.model_revision, device)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    shard_size = max(batch_size, args.shard_size // batch_size * batch_size)
    workers = args.num_workers if args.num_workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    settings = {**source.fingerprint(), "model": encoder.info.model_id, "model_revision": encoder.info.revision,
                "batch_size": batch_size, "shard_size": shard_size, "thumb_side": THUMB_SIDE,
                "device": device.type, "format_version": FORMAT_VERSION}
    work = prepare_work(out, settings, args.fresh)
    clear_artifacts(out)
    log.info("stage 3/6 embed: %d images, batch %d, %d workers, %s", len(source.records), batch_size, workers,
             device)
    speed = embed_shards(source, encoder, work, batch_size=batch_size, shard_size=shard_size, num_workers=workers)
    log.info("stage 4/6 pack: thumbnails and metadata")
    shards = len(shard_ranges(len(source.records), shard_size))
    packed = pack(source, work, out, shards, encoder.info.dim)
    log.info("stage 5/6 index: %s over %d vectors", args.index, len(packed.vectors))
    index, index_info = build_index(packed.vectors, args.index, args.index_params)
    faiss.write_index(index, str(out / INDEX))
    mode = args.eval if args.eval != "auto" else ("full" if device.type == "cuda" else "val")
    log.info("stage 6/6 evaluate: %s", mode)
    records = [source.records[i] for i in packed.rows]
    evaluation = evaluate(encoder, packed.vectors, [r.captions for r in records], [r.split for r in records], mode)
    names = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = Manifest(
        format_version=FORMAT_VERSION, model=encoder.info.to_dict(), dim=encoder.info.dim, count=len(packed.rows),
        index=index_info, thumbnails=ThumbnailInfo(files=packed.thumb_files, max_side=THUMB_SIDE),
        sources=source.infos, skipped=packed.skipped, evaluation=evaluation, builder_version=builder_version(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 1),
        images_per_second=round(speed["images_per_second"], 1), device=device.type,
        files=hash_files(out, names),
    )
    write_manifest(out, manifest)
    print(summary(manifest, out, speed))
    if repo_id:
        published = push(out, manifest, repo_id)
        print(f"published {published.repo_id} commit {published.commit[:12]} tag {published.tag}\n  {published.url}")
    return manifest


def summary(manifest: Manifest, out: Path, speed: dict) -> str:
    lines = [
        "",
        f"Built {manifest.count:,} images with {manifest.model['model_id']} (dim {manifest.dim}) "
        f"in {manifest.build_seconds:.0f} s",
        f"  embedding: {speed['images']:,} images this run at {speed['images_per_second']:.1f} images/s "
        f"on {manifest.device}",
        f"  skipped:   {len(manifest.skipped)} image(s)"
        + "".join(f"\n    {s.path}: {s.reason}" for s in manifest.skipped[:10])
        + (f"\n    ... and {len(manifest.skipped) - 10} more (see manifest.json)"
           if len(manifest.skipped) > 10 else ""),
        f"  index:     {manifest.index.factory} ({manifest.index.faiss_type}), recall@5 vs exact "
        f"{manifest.index.recall_at_5:.4f}",
    ]
    for name, result in manifest.evaluation.items():
        t2i = " ".join(f"{k} {v:.1f}" for k, v in result["text_to_image"].items())
        i2t = " ".join(f"{k} {v:.1f}" for k, v in result["image_to_text"].items())
        lines.append(f"  recall ({name}, {result['images']:,} images): text->image {t2i} | image->text {i2t}")
    lines.append(f"  files:     {out.resolve()} ({sum(f.size for f in manifest.files.values()) / 2**20:.1f} MB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
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

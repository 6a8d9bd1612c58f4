"""The builder CLI, `python -m builder.build`: parse the flags into a plan, run it, report, publish with --push."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipsearch.core.encoder import DEFAULT_MODEL, EncoderError
from clipsearch.core.manifest import DEFAULT_INDEX_REPO, PRECISIONS, ArtifactError, Manifest
from clipsearch.core.objects import CONTEXT, MIN_BOX_SIDE
from clipsearch.core.precision import BUILD_MIN_COSINE
from clipsearch.core.published import KARPATHY, format_recall, recall_label, recall_results, skipped_karpathy

from .distributed import Ranks
from .errors import BuildError, SourceError
from .finish import Built
from .hubcoco import DEFAULT_HF_CAPTIONS, DEFAULT_HF_IMAGES
from .index import AUTO, IndexBuildError
from .pipeline import run
from .plan import BuildPlan
from .publish import PublishError, push
from .sources import DEFAULT_SPLITS

USER_ERRORS = (BuildError, SourceError, EncoderError, ArtifactError, PublishError, IndexBuildError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m builder.build",
        description="Embed an image gallery with a CLIP-family model and write (and optionally push) a search index.",
        epilog="Several GPUs or nodes: launch the same command with torchrun (or accelerate launch), e.g. "
               "'torchrun --nproc_per_node 8 -m builder.build ...': each process embeds its share of the shards "
               "and rank 0 writes one index; across nodes --out must be shared storage (see builder/distributed.py).",
    )
    _gallery_flags(parser)
    _model_flags(parser)
    _output_flags(parser)
    args = parser.parse_args(argv)
    for flag in ("batch_size", "num_workers", "shard_size", "limit"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "num_workers" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be a positive number (got {value})")
    if args.private and args.public:
        parser.error("--private and --public contradict each other: pass one of them, or neither to keep the "
                     "visibility the Hub gives new repos in that namespace")
    return args


def _gallery_flags(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--coco-dir", type=Path, help="local COCO: DIR/<split>/*.jpg + DIR/annotations/*_<split>.json")
    where.add_argument("--images", type=Path, help="any folder of images (recursive); captions optional")
    parser.add_argument("--splits", default=",".join(DEFAULT_SPLITS), help="COCO splits (default %(default)s)")
    parser.add_argument("--hf-images", default=DEFAULT_HF_IMAGES, help="Hub dataset with images, ids, categories "
                        "(REPO[@REVISION]; default %(default)s)")
    parser.add_argument("--hf-captions", default=DEFAULT_HF_CAPTIONS, help="Hub dataset with captions and urls, "
                        "joined by image id (REPO[@REVISION]; '' for none; default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick trial builds)")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="CLIP-family checkpoint (text and image search) or "
                        "an image-only model such as facebook/dinov2-small (image search only): Hub id or folder "
                        "(default %(default)s; alternative: openai/clip-vit-base-patch32)")
    parser.add_argument("--model-revision", default=None, help="branch, tag or commit of --model")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                        help="CPU encoder: auto (default: int8, or bf16 where the CPU has AMX, kept only if its "
                        f"vectors agree with fp32 at cosine >= {BUILD_MIN_COSINE} on a calibration batch, else fp32), "
                        "int8, bf16 (the same check) or fp32 (the reference); CUDA always uses bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default 256 GPU, 32 CPU)")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes (default: cores-1, max 16)")
    parser.add_argument("--shard-size", type=int, default=4096, help="images per resumable shard")


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="artifact folder (default %(default)s)")
    parser.add_argument("--index", default=AUTO, help="'auto' (default: exact 'Flat' up to 20k vectors, "
                        "HNSW32 over fp16 up to 500k, IVF lists with 8-bit codes above, search effort tuned to "
                        "recall@5 >= 0.985 against exact), or any FAISS factory string such as 'Flat' or 'HNSW32'")
    parser.add_argument("--objects", default="auto", choices=["auto", "none"],
                        help="auto (default): an object index of the instance boxes when the source has them (COCO "
                             "folders and the Hub COCO source); none: images only")
    parser.add_argument("--object-context", type=float, default=CONTEXT,
                        help="context cut around each box, as a fraction of its width/height (default %(default)s)")
    parser.add_argument("--object-min-side", type=float, default=MIN_BOX_SIDE,
                        help="keep boxes whose shorter side has at least this many pixels (default %(default)s)")
    parser.add_argument("--serving-copy", default="int8", choices=["int8", "none"],
                        help="int8 (default): publish the encoder's int8 weights with the index, so the Space loads "
                             "~0.57 GB instead of the 1.5 GB fp32 checkpoint (SigLIP 2 B/16) and converts nothing; "
                             "none: the Space downloads the checkpoint and converts it at start-up")
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
    parser.add_argument("--private", action="store_true", help="with --push: create the Hub repo private (without "
                        "--private or --public, a new repo gets its namespace's default visibility)")
    parser.add_argument("--public", action="store_true", help="with --push: create the Hub repo public (an existing "
                        "repo's visibility is never changed)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the summary")


def report(plan: BuildPlan, built: Built) -> None:
    """The summary of a finished build (or one line for an --append), then --push and where it went."""
    if plan.append:
        print(f"\nThe index in {plan.out.resolve()} now holds {built.manifest.count:,} images.")
    else:
        print(summary(built.manifest, plan.out, built.speed))
    if plan.push_repo:
        published = push(plan.out, built.manifest, plan.push_repo, visibility=plan.visibility)
        print(f"published {published.repo_id} commit {published.commit[:12]} tag {published.tag}\n  {published.url}")


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
    lines.append(f"  confidence: {confidence_line(manifest)}")
    lines.append(f"  objects:   {objects_line(manifest)}")
    lines.append(f"  serving:   {serving_line(manifest)}")
    lines.append(f"  files:     {out.resolve()} ({sum(f.size for f in manifest.files.values()) / 2**20:.1f} MB)")
    return "\n".join(lines)


def serving_line(manifest: Manifest) -> str:
    """What the Space downloads for its encoder: the int8 serving copy, or the model's own checkpoint."""
    serving = manifest.serving
    if serving is None:
        return "none: the Space downloads the model's checkpoint and converts it at start-up"
    return (f"{serving.file} ({serving.size / 1e6:.0f} MB, {serving.precision}, cosine to fp32 {serving.cosine:.5f}): "
            "the Space loads it instead of the model's checkpoint; pictures: " +
            _graph_line(serving.image_graph, "image", manifest) +
            ("; texts: " + _graph_line(serving.text_graph, "text", manifest)
             if manifest.model.get("has_text", True) else ""))


def _graph_line(graph, kind: str, manifest: Manifest) -> str:
    if not graph:
        return f"its torch int8 {kind} tower (no ONNX graph)"
    line = f"{graph.file} ({graph.size / 1e6:.0f} MB, onnxruntime int8, cosine to fp32 {graph.cosine:.5f})"
    if graph.tower:
        line += (f", its torch tower apart in {graph.tower} ({manifest.files[graph.tower].size / 1e6:.0f} MB, "
                 "fetched only where the graph fails its check)")
    return line


def objects_line(manifest: Manifest) -> str:
    """The object index: boxes kept, how they were cut, and object vs whole-image category precision@5."""
    objects = manifest.objects
    if objects is None:
        return "none (the source lists no instance boxes, or --objects none): whole-image search only"
    line = (f"{objects.count:,} boxes indexed ({objects.boxes_kept:,} of {objects.boxes_total:,} listed have a shorter "
            f"side >= {objects.min_side:g} px), context {objects.context:g}, {objects.index.factory}")
    if scores := objects.evaluation:
        line += (f"\n    category precision@5 ({scores['queries']} queries '{scores['prompt']}'): objects "
                 f"{scores['objects_precision_at_5']:.3f} | whole images {scores['images_precision_at_5']:.3f}")
    if calibration := objects.calibration:
        fitted, held = calibration.fitted_on, calibration.held_out
        line += (f"\n    confidence: fitted on {fitted['categories']} categories' top {fitted['depth']} objects "
                 f"({fitted['positives']:,} of {fitted['pairs']:,} of the category asked); held-out expected "
                 f"calibration error {held['ece']:.3f} over {held['pairs']:,} pairs of {held['categories']} categories")
    else:
        line += "\n    confidence: none (too few categories, or no text side): object hits carry scores only"
    return line


def confidence_line(manifest: Manifest) -> str:
    """How the build's calibrated confidences were fitted (descriptions, then pictures) and how well each held on
    queries it was not fitted on."""
    if manifest.calibration is None:
        return "none (no captions to calibrate on, or an image-only model): hits carry similarity scores only"
    pictures = manifest.picture_calibration
    return _fit_line(manifest.calibration, "captions") + "\n    pictures: " + (
        _fit_line(pictures, "pictures") if pictures else "none (hits of a picture search carry similarity scores only)")


def _fit_line(calibration, unit: str) -> str:
    """One calibration's fit and held-out error; `unit` names its queries (builder.calibrate's fitted_on key)."""
    fitted, held = calibration.fitted_on, calibration.held_out
    quality = (f"held-out expected calibration error {held['ece']:.3f} over {held['pairs']:,} pairs" if "ece" in held
               else f"no held-out {unit} to measure it on")
    return (f"fitted on {fitted[unit]:,} {unit}' top {fitted['depth']} hits ({fitted['positives']:,} matches of "
            f"{fitted['pairs']:,}); {quality}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ranks = Ranks.from_env()
    where = ranks.label()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {f'[{where}] ' if where else ''}%(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        plan = BuildPlan.from_args(args, ranks)
        built = run(plan)
        if built is not None:  # None: a rank other than 0 of a distributed build
            report(plan, built)
    except USER_ERRORS as error:
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

"""How fast does a build go? The builder's embedding stage against a naive loop (images/s, on the CPU and on CUDA when
present), and optionally a whole `python -m builder.build` of a COCO-layout folder, alone and under torchrun.

    python -m benchmarks.build_speed [--images 512] [--device auto|cpu|cuda] [--coco 4000,1000] [--torchrun N]
    python -m benchmarks.build_speed --gpu-check     # the GPU check: --device cuda --images 16000 --coco 4000,1000
                                                      # --torchrun 1 (about 5 minutes on one H200)

Throughput: the naive loop (PIL open -> processor -> model, batch 32, one process: what a first script does) and
the builder (builder.embed.embed_shards: decoding workers with JPEG draft mode, the encoder as the CLI loads it) run in
this process on the same folder of 640x480 JPEGs with the default model's random-weight stand-in (same compute). On
the CPU the builder runs twice: `--precision fp32` (the reference arithmetic) and its default `auto` (int8, or bf16
where AMX makes it faster, kept only at cosine >= BUILD_MIN_COSINE to fp32, as the CLI does). On CUDA it runs once
(bf16 autocast), its vectors judged against CPU fp32 vectors of the first 512 images. Throughput figures exclude
model loading; the worst cosine to fp32 says what the faster arithmetic costs in vectors.

End to end (--coco TRAIN,VAL): a COCO-layout folder (testkit.galleries: shapes at 320 px, captions, instances and a
few broken files per split) built by the CLI: wall seconds from the command to its exit, and what the manifest says.
--torchrun N builds its first 1,000 images again with N processes (`torchrun --standalone`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.artifacts import coco_like_jpegs
from benchmarks.common import ROOT, Report, arguments, fresh_folder
from benchmarks.models import DEFAULT_MODEL, random_model

REFERENCE_IMAGES = 512  # on CUDA, this many are also embedded on the CPU in fp32
BUILD_ENV = {"HF_HUB_OFFLINE": "1", "CLIPSEARCH_KARPATHY": "off"}  # no network: the Karpathy file is not fetched


def naive(folder: Path, model_dir: Path, device: str, batch: int = 32) -> float:
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir).eval().to(device)
    processor = AutoProcessor.from_pretrained(model_dir)
    paths = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[start:start + batch]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            model.get_image_features(pixel_values=pixels).pooler_output.cpu()
    return len(paths) / (time.perf_counter() - started)


def builder(folder: Path, model_dir: Path, device: str, batch: int, workers: int | None,
            precision: str) -> tuple[float, str, np.ndarray]:
    """The builder's embedding stage over `folder`: (images/s, the precision the encoder kept, the vectors)."""
    from builder.embed import embed_shards
    from builder.sources import ImageFolderSource
    from clipsearch.core.encoder import Encoder
    from clipsearch.core.precision import BUILD_MIN_COSINE

    encoder = Encoder.load(str(model_dir), None, device, precision=precision, min_cosine=BUILD_MIN_COSINE)
    workers = workers if workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    with tempfile.TemporaryDirectory() as work:
        stats = embed_shards(ImageFolderSource(folder), encoder, Path(work), batch_size=batch, shard_size=batch * 8,
                             num_workers=workers, progress=False)
        shards = sorted(Path(work).glob("shards/*/vectors.npy"))
        vectors = np.concatenate([np.load(f, allow_pickle=False) for f in shards])
    return stats["images_per_second"], encoder.precision, vectors


def throughput(args, model: Path) -> str:
    jpegs = coco_like_jpegs(args.cache / "jpegs", args.images)
    folder = fresh_folder(args.cache / "build_speed-jpegs")
    for path in jpegs:
        (folder / path.name).symlink_to(path)
    batch = args.batch_size or (256 if args.device == "cuda" else 32)
    naive_rate = naive(folder, model, args.device)
    reference = None
    if args.device == "cuda":  # the CPU's fp32 vectors of the first images, to judge bf16 autocast against
        subset = fresh_folder(args.cache / "build_speed-reference")
        for path in jpegs[:REFERENCE_IMAGES]:
            (subset / path.name).symlink_to(path)
        reference = builder(subset, model, "cpu", 32, args.num_workers, "fp32")[2]
    rows = []
    for precision in ("fp32", "auto") if args.device == "cpu" else ("fp32",):
        rows.append(builder(folder, model, args.device, batch, args.num_workers, precision))
    reference = rows[0][2] if reference is None else reference
    lines = [f"{args.images:,} JPEGs 640x480, {args.device}:", "",
             "| pipeline | images/s | × naive | cosine to CPU fp32 (worst) |", "|---|---:|---:|---:|",
             f"| naive loop (PIL open -> processor -> model, batch 32, 1 process) | {naive_rate:.1f} | 1.00× | |"]
    for rate, kept, vectors in rows:
        worst = float(np.min(np.sum(vectors[:len(reference)] * reference, axis=1)))
        lines.append(f"| builder, {kept} (decoding workers with JPEG draft, batch {batch}) | {rate:.1f} | "
                     f"{rate / naive_rate:.2f}× | {worst:.4f} |")
    return "\n".join(lines)


def cli(command: list[str], out: Path) -> dict:
    """A build command from the repository root; its wall seconds and the manifest it wrote."""
    started = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, env={**os.environ, **BUILD_ENV}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{child.stdout[-2000:]}\n{child.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads((out / "manifest.json").read_text())}


def evaluations(manifest: dict) -> str:
    """Which evaluations a build ran (with random weights their figures mean nothing: only that they ran)."""
    return "; ".join(f"{name}: T→I R@5 {ev['text_to_image']['R@5']}" if "text_to_image" in ev else
                     f"{name}: {'skipped' if 'skipped' in ev else 'done'}"
                     for name, ev in (manifest.get("evaluation") or {}).items()) or "—"


def end_to_end(args, model: Path) -> str:
    from testkit.galleries import write_coco_dir

    train, val = (int(n) for n in args.coco.split(","))
    coco = args.cache / f"coco-{train}-{val}"
    if not (coco / "annotations" / "captions_val2017.json").exists():
        write_coco_dir(fresh_folder(coco), {"train2017": train, "val2017": val}, size=320)
    work = fresh_folder(args.cache / "build_speed-builds")
    build = [sys.executable, "-m", "builder.build", "--coco-dir", str(coco), "--model", str(model), "--device",
             args.device, "--quiet"]
    runs = [("`python -m builder.build --coco-dir`", cli([*build, "--out", str(work / "one")], work / "one"))]
    if args.torchrun:
        ddp = ["torchrun", "--standalone", "--nproc_per_node", str(args.torchrun), *build[1:], "--limit", "1000",
               "--eval", "none", "--out", str(work / "ddp")]
        runs.append((f"`torchrun --nproc_per_node {args.torchrun}`, first 1,000 images, --eval none",
                     cli(ddp, work / "ddp")))
    lines = [f"COCO layout, {train:,} train + {val:,} val images at 320 px plus 4 broken or missing files per split, "
             f"{args.device}:", "", "| build | wall s | rows | skipped | precision | embedding images/s | "
             "build_seconds (manifest) | evaluation (random weights: only that it ran) |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for name, m in runs:
        lines.append(f"| {name} | {m['seconds']:.1f} | {m['count']:,} | {len(m.get('skipped', []))} | "
                     f"{m.get('precision', '?')} | {m.get('images_per_second', 0):.1f} | {m.get('build_seconds', '?')} "
                     f"| {evaluations(m)} |")
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__, quick="a check that it runs end to end: 64 JPEGs, a 40 + 10 image COCO build, "
                                      "torchrun with 1 process")
    parser.add_argument("--images", type=int, default=512, help="JPEGs for the throughput table")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="builder batch (default 256 CUDA, 32 CPU)")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes (default cores-1, max 16)")
    parser.add_argument("--coco", metavar="TRAIN,VAL", help="also build a COCO-layout folder of this size end to end")
    parser.add_argument("--torchrun", type=int, default=0, metavar="N", help="with --coco: also under torchrun, N "
                                                                            "processes")
    parser.add_argument("--gpu-check", action="store_true",
                        help="the GPU check: --device cuda --images 16000 --coco 4000,1000 --torchrun 1")
    args = parser.parse_args()
    if args.gpu_check:
        args.device, args.images, args.coco, args.torchrun = "cuda", 16000, "4000,1000", 1
    if args.quick:
        args.images, args.coco, args.torchrun = 64, "40,10", 1
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.WARNING)
    report = Report.start("build_speed", "Build speed: the builder against a naive loop")
    model = random_model(DEFAULT_MODEL, args.cache)
    body = ("The default model's random-weight stand-in (same compute as the real model). Figures of one run; "
            "compare within a table.\n\n" + throughput(args, model) + "\n")
    if args.coco:
        body += "\n" + end_to_end(args, model) + "\n"
    report.write(body + ("\n(--quick: a check that the script runs, not figures to quote)\n" if args.quick else ""),
                 args.results)


if __name__ == "__main__":
    main()

"""Builder throughput: our pipeline vs a naive seed-style loop (PIL open -> processor -> model, batch 32, one process).

    python benchmarks/build_throughput.py [--images 512] [--device cpu|cuda] [--batch-size 32] [--num-workers N]

Both run in this process on the same JPEG folder with a ViT-B/32-size CLIP (random weights: same compute). On CPU
the builder is timed twice: with `--precision fp32` (the reference arithmetic) and with its default `--precision
auto` (int8, or bf16 where AMX makes it faster, kept only at cosine >= BUILD_MIN_COSINE to fp32, as the CLI does),
whose vectors are compared with fp32's.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from common import coco_like_jpegs, machine, vit_b32_clip


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


def ours(folder: Path, model_dir: Path, device: str, batch: int, workers: int | None, work: Path,
         precision: str = "fp32") -> tuple[float, str]:
    from builder.embed import embed_shards
    from builder.sources import ImageFolderSource
    from clipsearch.core.encoder import Encoder

    source = ImageFolderSource(folder)
    from clipsearch.core.precision import BUILD_MIN_COSINE

    encoder = Encoder.load(str(model_dir), None, device, precision=precision, min_cosine=BUILD_MIN_COSINE)
    import os

    workers = workers if workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    stats = embed_shards(source, encoder, work, batch_size=batch, shard_size=batch * 8, num_workers=workers)
    return stats["images_per_second"], encoder.precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model_dir = vit_b32_clip(args.cache / "clip-b32")
    folder = coco_like_jpegs(args.cache / "jpegs", args.images)
    batch = args.batch_size or (256 if args.device == "cuda" else 32)
    naive_rate = naive(folder, model_dir, args.device)
    rows = []
    reference = None
    if args.device == "cuda":  # the CPU's fp32 vectors of the first images, to judge bf16 autocast against
        subset = args.cache / "reference-jpegs"
        subset.mkdir(exist_ok=True)
        for path in sorted(folder.glob("*.jpg"))[:REFERENCE_IMAGES]:
            if not (subset / path.name).exists():
                (subset / path.name).symlink_to(path)
        with tempfile.TemporaryDirectory() as work:
            ours(subset, model_dir, "cpu", 32, args.num_workers, Path(work), "fp32")
            reference = vectors_of(Path(work))
    for precision in ("fp32", "auto") if args.device == "cpu" else ("fp32",):
        with tempfile.TemporaryDirectory() as work:
            rate, kept = ours(folder, model_dir, args.device, batch, args.num_workers, Path(work), precision)
            rows.append((rate, kept, vectors_of(Path(work))))
    reference = rows[0][2] if reference is None else reference
    print(f"\nBuilder throughput, {args.images} JPEGs 640x480, ViT-B/32 size, {args.device} ({machine()})\n")
    print("| pipeline | images/s | ratio | cosine to CPU fp32 (worst) |\n|---|---:|---:|---:|")
    print(f"| naive loop (PIL open -> processor -> model, batch 32, 1 process) | {naive_rate:.1f} | 1.00x | |")
    for rate, kept, vectors in rows:
        worst = float(np.min(np.sum(vectors[:len(reference)] * reference, axis=1)))
        print(f"| builder, {kept} (workers decode with JPEG draft, batch {batch}) | {rate:.1f} | "
              f"{rate / naive_rate:.2f}x | {worst:.4f} |")


REFERENCE_IMAGES = 512  # on CUDA, this many are also embedded on the CPU in fp32


def vectors_of(work: Path) -> np.ndarray:
    """The embedded vectors of one run, in row order, from its shard files."""
    return np.concatenate([np.load(f, allow_pickle=False) for f in sorted(work.glob("shards/*/vectors.npy"))])


if __name__ == "__main__":
    main()

"""Builder throughput: our pipeline vs a naive seed-style loop (PIL open -> processor -> model, batch 32, one process).

    python benchmarks/build_throughput.py [--images 512] [--device cpu|cuda] [--batch-size 32] [--num-workers N]

Both run in this process on the same JPEG folder with a ViT-B/32-size CLIP (random weights: same compute).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

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


def ours(folder: Path, model_dir: Path, device: str, batch: int, workers: int | None, work: Path) -> float:
    from builder.embed import embed_shards
    from builder.sources import ImageFolderSource
    from clipsearch.encoder import Encoder

    source = ImageFolderSource(folder)
    encoder = Encoder.load(str(model_dir), None, device)
    import os

    workers = workers if workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    stats = embed_shards(source, encoder, work, batch_size=batch, shard_size=batch * 8, num_workers=workers)
    return stats["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model_dir = vit_b32_clip(args.cache / "vit-b32")
    folder = coco_like_jpegs(args.cache / "jpegs", args.images)
    batch = args.batch_size or (256 if args.device == "cuda" else 32)
    naive_rate = naive(folder, model_dir, args.device)
    with tempfile.TemporaryDirectory() as work:
        our_rate = ours(folder, model_dir, args.device, batch, args.num_workers, Path(work))
    print(f"\nBuilder throughput, {args.images} JPEGs 640x480, ViT-B/32 size, {args.device} ({machine()})\n")
    print("| pipeline | images/s | ratio |\n|---|---:|---:|")
    print(f"| naive loop (PIL open -> processor -> model, batch 32, 1 process) | {naive_rate:.1f} | 1.00x |")
    ratio = our_rate / naive_rate
    print(f"| builder (workers decode with JPEG draft, batch {batch}) | {our_rate:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()

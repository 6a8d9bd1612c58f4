"""Shared benchmark helpers: a ViT-B/32-size CLIP with random weights and a folder of COCO-like JPEGs."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def vit_b32_clip(folder: Path) -> Path:
    """openai/clip-vit-base-patch32's architecture (same compute as the default LAION ViT-B/32), random weights."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from tiny_models import _clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(projection_dim=512))  # defaults: ViT-B/32 vision, 12-layer 512-wide text
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=_clip_tokenizer())
    processor.tokenizer.model_max_length = 77
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def coco_like_jpegs(folder: Path, count: int, size=(640, 480), seed: int = 0) -> Path:
    """Photo-sized JPEGs with texture (noise + shapes) so decoding costs what a real photo costs."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(seed + existing)
    for number in range(existing, count):
        base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            draw.ellipse([x, y, x + rng.integers(20, 200), y + rng.integers(20, 200)],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"{number:06d}.jpg", quality=90)
    return folder

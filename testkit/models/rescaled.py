"""A copy of a CLIP checkpoint whose image-text cosines are all scaled down: same rankings, another cosine scale."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch


def with_cosines_scaled(source: Path, dest: Path, factor: float = 1 / 3, seed: int = 0) -> Path:
    """Save to `dest` a copy of the CLIP at `source` whose every image-text cosine is `factor` times the original's.

    The image projection gains as many dimensions again, filled by a fixed random rotation of the image's own
    projection times s (text projects zeros there): image vectors grow by exactly sqrt(1 + s^2), so with
    s = sqrt(1/factor^2 - 1) each image-text cosine shrinks by `factor` while rankings, and image-image cosines, stay
    the same. A trained shapes CLIP that scores matches near 0.9 then scores them near 0.3: a real model of another
    cosine scale, loaded through the same files and code as any other."""
    from transformers import CLIPModel

    source, dest = Path(source), Path(dest)
    model = CLIPModel.from_pretrained(source)
    visual, text = model.visual_projection.weight.data, model.text_projection.weight.data
    width = visual.shape[0]
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(seed)))
    strength = math.sqrt(1 / factor**2 - 1)
    config = model.config
    config.projection_dim = 2 * width
    scaled = CLIPModel(config)
    scaled.load_state_dict({**model.state_dict(),
                            "visual_projection.weight": torch.cat([visual, strength * rotation @ visual]),
                            "text_projection.weight": torch.cat([text, torch.zeros_like(text)])})
    scaled.save_pretrained(dest, safe_serialization=True)
    for name in source.iterdir():  # tokenizer and image processor files, as the source ships them
        if name.is_file() and not name.name.startswith(("config.json", "model.")) and not (dest / name.name).exists():
            shutil.copy2(name, dest / name.name)
    return dest

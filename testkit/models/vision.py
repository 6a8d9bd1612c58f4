"""Random-init tiny checkpoints that are not CLIP-like: image-only backbones, and a text-only model to be refused."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import PATCH_SIZE

VISION_KINDS: tuple[str, ...] = ("dinov2", "vit", "resnet")
VISION_WIDTH = {"dinov2": 48, "vit": 40, "resnet": 24}  # distinct widths, so a wrong dimension cannot pass


def save_tiny_vision(path, kind: str = "dinov2", image_size: int = 32, seed: int = 0) -> Path:
    """Write a random-init tiny image-only checkpoint (model + PIL image processor) of `kind` to `path`:
    DINOv2 and ViT (class token), ResNet (global average pooling, (B, C, 1, 1) pooled output)."""
    from transformers import (
        BitImageProcessorPil,
        ConvNextImageProcessorPil,
        Dinov2Config,
        Dinov2Model,
        ResNetConfig,
        ResNetModel,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    width = VISION_WIDTH[kind]
    transformer = dict(hidden_size=width, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * width,
                       image_size=image_size, patch_size=PATCH_SIZE)
    crop = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "dinov2":
            model, processor = Dinov2Model(Dinov2Config(**transformer)), BitImageProcessorPil(**crop)
        elif kind == "vit":
            model = ViTModel(ViTConfig(**transformer))
            processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size})
        elif kind == "resnet":
            model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[16, width], depths=[1, 1]))
            processor = ConvNextImageProcessorPil(size={"shortest_edge": image_size}, crop_pct=1.0)
        else:
            raise ValueError(f"unknown kind {kind!r}; expected one of {VISION_KINDS}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def save_tiny_text_only(path) -> Path:
    """A tiny BERT: a transformers model that takes no images (the encoder must refuse it with a sentence)."""
    from transformers import BertConfig, BertModel

    path = Path(path)
    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(path, safe_serialization=True)
    return path

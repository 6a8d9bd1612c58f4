"""Random-init tiny CLIP, SigLIP and SigLIP 2 checkpoints, saved with the files and tokenizer classes of real repos."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .tokenization import (
    MAX_TEXT_LEN,
    SIGLIP2_TEXT_LEN,
    _clip_tokenizer,
    _gemma_tokenizer,
    _siglip2_tokenizer,
    _siglip_tokenizer,
    _write_reference_tokenizer_files,
)

KINDS: tuple[str, ...] = ("clip", "siglip", "siglip2")
# Also accepted by save_tiny_clip: fixed-resolution SigLIP 2 (model_type "siglip" with a Gemma tokenizer).
EXTRA_KINDS: tuple[str, ...] = ("siglip2-fixres",)
PROJECTION_DIM = 32  # embedding size returned by get_text_features/get_image_features
PATCH_SIZE = 8
# Siglip2Processor.__call__ forces patch_size=16, max_num_patches=256 and text max_length=64
# (class-level defaults that override the saved image processor), so the siglip2 model is
# sized to match or AutoProcessor output would not fit it.
SIGLIP2_PATCH_SIZE = 16
SIGLIP2_NUM_PATCHES = 256
# Both towers of every family: two layers of four heads, no dropout.
_LAYERS = dict(num_hidden_layers=2, num_attention_heads=4, attention_dropout=0.0)


def _clip(image_size: int):
    """CLIP (openai/clip-*, laion/CLIP-*): CLIPTokenizer, separate text and vision widths, a projection."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            max_position_embeddings=MAX_TEXT_LEN,
            # CLIP pools at the first eos_token_id; it must match the tokenizer's ids.
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **_LAYERS,
        ),
        vision_config=dict(hidden_size=64, intermediate_size=128, image_size=image_size, patch_size=PATCH_SIZE,
                           **_LAYERS),
        projection_dim=PROJECTION_DIM,
    )
    model = CLIPModel(config)
    # Import the Pil class directly: plain CLIPImageProcessor warns and falls back to it anyway when torchvision is
    # missing.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _siglip2_text(tokenizer) -> dict:
    """SigLIP 2's text config around its tokenizer (64-token text), for both the NaFlex and fixed-resolution kinds."""
    return dict(vocab_size=len(tokenizer), max_position_embeddings=SIGLIP2_TEXT_LEN,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, projection_size=PROJECTION_DIM)


def _siglip(image_size: int, gemma: bool, languages: tuple[str, ...] = ("en",)):
    """SigLIP (google/siglip-*: SiglipTokenizer) or, with `gemma`, fixed-resolution SigLIP 2
    (google/siglip2-base-patch16-224 & co.: a "siglip" model with SigLIP 2's Gemma tokenizer and 64-token text),
    its tokenizer learnt from the captions in `languages`."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    if gemma:
        tokenizer = _gemma_tokenizer(SIGLIP2_TEXT_LEN, languages)
        text = _siglip2_text(tokenizer)
    else:
        tokenizer = _siglip_tokenizer()
        text = dict(vocab_size=len(tokenizer), max_position_embeddings=MAX_TEXT_LEN,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                    projection_size=PROJECTION_DIM)
    # SigLIP has no separate projection: image features have the vision hidden size.
    dims = dict(hidden_size=PROJECTION_DIM, intermediate_size=64, **_LAYERS)
    config = SiglipConfig(text_config={**text, **dims},
                          vision_config=dict(image_size=image_size, patch_size=PATCH_SIZE, **dims))
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    return SiglipModel(config), SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _siglip2_naflex():
    """NaFlex SigLIP 2 (google/siglip2-*-naflex): images resized to at most max_num_patches patches, then padded; the
    processor also returns pixel_attention_mask and spatial_shapes."""
    from transformers import Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Processor

    tokenizer = _siglip2_tokenizer()
    dims = dict(hidden_size=PROJECTION_DIM, intermediate_size=64, **_LAYERS)
    config = Siglip2Config(
        text_config={**_siglip2_text(tokenizer), **dims},
        vision_config=dict(num_patches=SIGLIP2_NUM_PATCHES, patch_size=SIGLIP2_PATCH_SIZE, **dims),
    )
    image_processor = Siglip2ImageProcessorPil(patch_size=SIGLIP2_PATCH_SIZE, max_num_patches=SIGLIP2_NUM_PATCHES)
    return Siglip2Model(config), Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)


def _build(kind: str, image_size: int, seed: int, languages: tuple[str, ...] = ("en",)):
    """Random-init (model, processor) for one family; the processor holds tokenizer + image processor. `languages`
    (the captions the tokenizer is learnt from) is for "siglip2-fixres" only."""
    if languages != ("en",) and kind != "siglip2-fixres":
        raise ValueError(f"a {kind!r} tokenizer is English-only; languages={languages} needs 'siglip2-fixres'")
    if image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}")
    # Init uses the global torch RNG; fork it so callers' random state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "clip":
            model, processor = _clip(image_size)
        elif kind in ("siglip", "siglip2-fixres"):
            model, processor = _siglip(image_size, gemma=kind == "siglip2-fixres", languages=languages)
        elif kind == "siglip2":
            model, processor = _siglip2_naflex()
        else:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS + EXTRA_KINDS}")
    model.eval()
    return model, processor


class _DropDefaultConfigTokenWarning(logging.Filter):
    """Hide the bogus special-token warning raised while saving SigLIP configs.

    config.save_pretrained diffs against a default SiglipTextConfig(), whose own defaults
    (vocab 32000, bos/eos 49406/49407) fail validation; our config is not the one at fault.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "integer within the vocabulary" not in record.getMessage()


def save_model(model, path: Path) -> None:
    """model.save_pretrained (safetensors) without transformers' warning about a default config's tokens."""
    config_logger = logging.getLogger("transformers.configuration_utils")
    quiet = _DropDefaultConfigTokenWarning()
    config_logger.addFilter(quiet)
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        config_logger.removeFilter(quiet)


def _save(path: Path, model, processor) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    processor.save_pretrained(path)
    # transformers 5 nests the image processor inside processor_config.json; also write the
    # classic preprocessor_config.json for loaders that only look there.
    processor.image_processor.save_pretrained(path)
    _write_reference_tokenizer_files(path, processor.tokenizer)


def save_tiny_clip(path, kind: str = "clip", image_size: int = 32, seed: int = 0) -> Path:
    """Write a random-init tiny `kind` checkpoint (model, tokenizer, image processor) to `path`.

    kind is one of KINDS or EXTRA_KINDS. Features are PROJECTION_DIM wide for every kind. "siglip2" ignores
    image_size: its NaFlex processor sizes images by patch count (see SIGLIP2_NUM_PATCHES). Each kind saves the
    tokenizer class and files its real Hub repos carry (CLIPTokenizer with vocab.json/merges.txt/tokenizer.json,
    SiglipTokenizer with spiece.model/tokenizer.json, GemmaTokenizer with tokenizer.model/tokenizer.json for both
    SigLIP 2 kinds).
    """
    path = Path(path)
    model, processor = _build(kind, image_size, seed)
    _save(path, model, processor)
    return path

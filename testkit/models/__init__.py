"""Offline tiny CLIP-family checkpoints, the coloured-shapes data, and a tiny CLIP trained on it."""

# Modules, by concern:
# - shapes.py        the synthetic data: coloured shapes drawn on a noisy background, and their captions
# - tokenization.py  tiny tokenizers of the real classes, learnt from the captions, and the files real repos ship
# - checkpoints.py   random-init tiny CLIP / SigLIP / SigLIP 2 checkpoints (`save_tiny_clip`)
# - vision.py        image-only backbones (DINOv2, ViT, ResNet) and a text-only BERT
# - training.py      contrastive training on the shapes (`train_shapes_clip`, the English/Russian
#                    `train_bilingual_siglip`) and their retrieval metrics
# - cache.py         the trained models kept between runs, keyed by a hash of their recipe (`cached_shapes_clip`,
#                    `cached_bilingual_siglip`)

from .cache import CACHE_ENV, cache_root, cached_bilingual_siglip, cached_shapes_clip, recipe_key
from .checkpoints import (
    EXTRA_KINDS,
    KINDS,
    PATCH_SIZE,
    PROJECTION_DIM,
    SIGLIP2_NUM_PATCHES,
    SIGLIP2_PATCH_SIZE,
    save_tiny_clip,
)
from .shapes import (
    CAPTION_TEMPLATES,
    COLORS,
    LANGUAGES,
    RU_CAPTION_TEMPLATES,
    RU_COLORS,
    RU_SHAPES,
    SHAPES,
    caption_for,
    draw_shape,
    shapes_gallery,
)
from .tokenization import (
    MAX_TEXT_LEN,
    SIGLIP2_TEXT_LEN,
    _clip_tokenizer,
    _gemma_tokenizer,
    _learn_merges,
    _siglip_tokenizer,
    _write_reference_tokenizer_files,
    siglip_reference_ids,
    siglip_tokenizer_json,
)
from .training import MARKER_FILE, shapes_retrieval_metrics, train_bilingual_siglip, train_shapes_clip
from .vision import VISION_KINDS, VISION_WIDTH, save_tiny_text_only, save_tiny_vision

__all__ = [
    "CACHE_ENV", "CAPTION_TEMPLATES", "COLORS", "EXTRA_KINDS", "KINDS", "LANGUAGES", "MARKER_FILE", "MAX_TEXT_LEN",
    "PATCH_SIZE", "PROJECTION_DIM", "RU_CAPTION_TEMPLATES", "RU_COLORS", "RU_SHAPES", "SHAPES", "SIGLIP2_NUM_PATCHES",
    "SIGLIP2_PATCH_SIZE", "SIGLIP2_TEXT_LEN", "VISION_KINDS", "VISION_WIDTH", "cache_root", "cached_bilingual_siglip",
    "cached_shapes_clip", "caption_for", "draw_shape", "recipe_key", "save_tiny_clip", "save_tiny_text_only",
    "save_tiny_vision", "shapes_gallery", "shapes_retrieval_metrics", "siglip_reference_ids", "siglip_tokenizer_json",
    "train_bilingual_siglip", "train_shapes_clip",
    # the tokenizer builders benchmarks/common.py and benchmarks/frontier.py use
    "_clip_tokenizer", "_gemma_tokenizer", "_learn_merges", "_siglip_tokenizer", "_write_reference_tokenizer_files",
]

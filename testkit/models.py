"""Offline tiny CLIP/SigLIP checkpoints and a synthetic coloured-shapes dataset for tests."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers.pre_tokenizers import ByteLevel

logger = logging.getLogger(__name__)

# RGB values far apart in hue so a 32x32 model separates them easily; none is close
# to the light background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "a photo of a {color} {shape}",
    "{color} {shape} on a plain background",
    "a picture of a {color} {shape}",
    "a {shape} that is {color}",
)

KINDS: tuple[str, ...] = ("clip", "siglip", "siglip2")
# Also accepted by save_tiny_clip: fixed-resolution SigLIP 2 (model_type "siglip" with a Gemma tokenizer).
EXTRA_KINDS: tuple[str, ...] = ("siglip2-fixres",)
PROJECTION_DIM = 32  # embedding size returned by get_text_features/get_image_features
MAX_TEXT_LEN = 16  # max_position_embeddings and tokenizer model_max_length
PATCH_SIZE = 8
# Siglip2Processor.__call__ forces patch_size=16, max_num_patches=256 and text max_length=64
# (class-level defaults that override the saved image processor), so the siglip2 model is
# sized to match or AutoProcessor output would not fit it.
SIGLIP2_PATCH_SIZE = 16
SIGLIP2_NUM_PATCHES = 256
SIGLIP2_TEXT_LEN = 64
MARKER_FILE = "train_metrics.json"  # written last by train_shapes_clip, so it marks a complete folder

# Extra everyday words so that common queries become real tokens instead of byte soup.
_EXTRA_WORDS = "an the image of with and in this is that shape colour color dark light".split()


def _vocab_words() -> list[str]:
    words = set(_EXTRA_WORDS) | set(COLORS) | set(SHAPES)
    for template in CAPTION_TEMPLATES:
        words.update(w for w in template.split() if not w.startswith("{"))
    return sorted(words)


# --------------------------------------------------------------------------- images


def caption_for(color: str, shape: str, seed: int = 0) -> str:
    """Caption for a colour/shape pair; seed 0 gives the plain "a red circle" form."""
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape {color!r}/{shape!r}")
    return CAPTION_TEMPLATES[seed % len(CAPTION_TEMPLATES)].format(color=color, shape=shape)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        # Upright equilateral triangle, slightly enlarged and re-centred on its bounding box
        # so it covers about as much of the image as the other shapes.
        r *= 1.15
        pts = [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)]
        return [(cx + r * x, cy + r * (y + 0.25)) for x, y in pts]
    if shape == "cross":
        w = 0.36  # arm half-width relative to r: thick enough to survive downsampling to 32 px
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w)]
        pts += [(-x, -y) for x, y in pts]  # the cross is point-symmetric: mirror the first half
    else:  # square, a bit smaller than the circle's bounding box so their areas are similar
        pts = [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)]
    return [(cx + r * x, cy + r * y) for x, y in pts]


def draw_shape(color: str, shape: str, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw one coloured shape at a seeded random position/scale on a light noisy background."""
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape {color!r}/{shape!r}")
    # str seeds are hashed deterministically by random.Random (unlike hash()), so each
    # (colour, shape, seed) triple gets its own reproducible stream.
    rng = random.Random(f"{color}|{shape}|{seed}")
    nprng = np.random.default_rng(rng.randrange(2**32))

    tint = np.array([rng.randint(215, 250) for _ in range(3)], dtype=np.float32)
    noise = nprng.normal(0.0, 6.0, size=(size, size, 3)).astype(np.float32)
    background = np.clip(tint + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background, "RGB")

    # Jitter the fill a little so two images of the same class are never pixel-identical.
    fill = tuple(int(np.clip(v + rng.randint(-20, 20), 0, 255)) for v in COLORS[color])
    r = size * rng.uniform(0.28, 0.4)
    margin = r * 1.05
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    draw = ImageDraw.Draw(image)
    # Shapes stay axis-aligned: at 32x32 input, rotation makes squares and circles hard to tell apart.
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)
    return image


def shapes_gallery(per_combo: int = 2, seed: int = 1000, size: int = 64) -> list[tuple[str, str, Image.Image]]:
    """Every colour x shape combination `per_combo` times as (colour, shape, image), in a fixed order."""
    return [
        (color, shape, draw_shape(color, shape, size=size, seed=seed + k))
        for color in COLORS
        for shape in SHAPES
        for k in range(per_combo)
    ]


# --------------------------------------------------------------------------- tokenizers


def _learn_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair until every word is a single symbol.

    Written out instead of using tokenizers' BpeTrainer because that breaks frequency ties
    by hash-map order, which changes from process to process: the vocabulary (and so the
    model's embedding rows and the whole training run) would differ between runs.
    Ties here go to the lexicographically smallest pair.
    """
    words = [list(w) for w in dict.fromkeys(tuple(w) for w in words)]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for w in words for pair in zip(w, w[1:], strict=False))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [w[i] + w[i + 1]]
                i += 1


def _byte_level_bpe(normalizer, pre_tokenizer, end_of_word_suffix: str = "") -> tuple[dict[str, int], list]:
    """Vocabulary and merges in which every caption word is one token, plus all 256 byte symbols.

    Keeping the full byte alphabet (and its end-of-word variants) means any text,
    emoji and CJK included, still tokenizes into known byte tokens instead of failing.
    """
    words = []
    for word in _vocab_words():
        # Split exactly as the tokenizer will, so the merges apply to the same symbols.
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(word)):
            words.append(list(piece[:-1]) + [piece[-1] + end_of_word_suffix])
    merges = _learn_merges(words)
    alphabet = sorted(ByteLevel.alphabet())
    symbols = alphabet + ([c + end_of_word_suffix for c in alphabet] if end_of_word_suffix else [])
    vocab: dict[str, int] = {}
    for symbol in symbols + ["".join(m) for m in merges]:
        vocab.setdefault(symbol, len(vocab))
    return vocab, merges


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    # An empty CLIPTokenizer carries the real CLIP normalizer/pre-tokenizer; reuse them
    # so the learned merges line up with how CLIPTokenizer splits text.
    template = CLIPTokenizer().backend_tokenizer
    vocab, merges = _byte_level_bpe(template.normalizer, template.pre_tokenizer, "</w>")
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TEXT_LEN)


def _caption_corpus() -> list[str]:
    """Every caption of every colour x shape, plus each vocabulary word alone: what the tiny tokenizers learn from."""
    sentences = [template.format(color=color, shape=shape)
                 for color in COLORS for shape in SHAPES for template in CAPTION_TEMPLATES]
    return sentences + _vocab_words()


def _train_sentencepiece(**options) -> bytes:
    """A tiny sentencepiece model (serialized ModelProto) trained on the captions in well under a second.

    One thread and a fixed corpus: the same bytes in every run, so models built on it are reproducible."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_caption_corpus()), model_writer=model, num_threads=1,
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2, **options)
    return model.getvalue()


def _siglip_tokenizer():
    """The real SiglipTokenizer (sentencepiece, spiece.model) as google/siglip-* repos declare it in
    tokenizer_config.json, built on a tiny T5-style unigram model: <pad>=0, </s>=1, <unk>=2, no BOS; the
    tokenizer appends </s>, pads with </s> and lowercases (do_lower_case, its default, as the real repos use)."""
    import tempfile

    from transformers import SiglipTokenizer

    proto = _train_sentencepiece(model_type="unigram", vocab_size=60, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "spiece.model"
        vocab_file.write_bytes(proto)
        # save_pretrained writes the loaded model proto back once this file is gone.
        return SiglipTokenizer(str(vocab_file), model_max_length=MAX_TEXT_LEN)


def _gemma_tokenizer(model_max_length: int):
    """The real GemmaTokenizer, as SigLIP 2 repos (fixed-resolution and NaFlex alike) declare it: a sentencepiece
    BPE model with byte fallback and Gemma's special ids (<pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4), converted
    by transformers into tokenizer.json. The sentencepiece file rides along as `tiny_tokenizer_model`, so `_save`
    can write tokenizer.model beside tokenizer.json as the real repos have it. GemmaTokenizer does not lowercase."""
    import tempfile

    from transformers import GemmaTokenizer

    proto = _train_sentencepiece(
        model_type="bpe", vocab_size=400, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<mask>"], byte_fallback=True,
        split_digits=True, add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(proto)
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GemmaTokenizer", "model_max_length": model_max_length}))
        tokenizer = GemmaTokenizer.from_pretrained(folder)
    tokenizer.tiny_tokenizer_model = proto
    return tokenizer


def _siglip2_tokenizer():
    # Siglip2Processor hard-codes max_length=64 for text, so the tokenizer matches it.
    return _gemma_tokenizer(SIGLIP2_TEXT_LEN)


# --------------------------------------------------------------------------- models


def _build(kind: str, image_size: int, seed: int):
    """Random-init (model, processor) for one family; the processor holds tokenizer + image processor."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        Siglip2Processor,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
        SiglipProcessor,
    )

    if image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}")
    common = dict(num_hidden_layers=2, num_attention_heads=4, attention_dropout=0.0)
    # Init uses the global torch RNG; fork it so callers' random state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "clip":
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
                    **common,
                ),
                vision_config=dict(
                    hidden_size=64, intermediate_size=128, image_size=image_size, patch_size=PATCH_SIZE, **common
                ),
                projection_dim=PROJECTION_DIM,
            )
            model = CLIPModel(config)
            # Import the Pil class directly: plain CLIPImageProcessor warns and falls back
            # to it anyway when torchvision is missing.
            image_processor = CLIPImageProcessorPil(
                size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
            )
            processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        elif kind in ("siglip", "siglip2-fixres"):
            if kind == "siglip":
                tokenizer = _siglip_tokenizer()
                text = dict(
                    vocab_size=len(tokenizer),
                    max_position_embeddings=MAX_TEXT_LEN,
                    pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=None,
                    eos_token_id=tokenizer.eos_token_id,
                    projection_size=PROJECTION_DIM,
                )
            else:
                # Fixed-resolution SigLIP 2 (google/siglip2-base-patch16-224 & co.): a SigLIP model ("siglip" in
                # config.json) with SigLIP 2's Gemma tokenizer and 64-token text.
                tokenizer = _gemma_tokenizer(SIGLIP2_TEXT_LEN)
                text = _siglip2_text(tokenizer)
            # SigLIP has no separate projection: image features have the vision hidden size.
            dims = dict(hidden_size=PROJECTION_DIM, intermediate_size=64, **common)
            config = SiglipConfig(
                text_config={**text, **dims},
                vision_config=dict(image_size=image_size, patch_size=PATCH_SIZE, **dims),
            )
            model = SiglipModel(config)
            image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
            processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        elif kind == "siglip2":
            tokenizer = _siglip2_tokenizer()
            text = _siglip2_text(tokenizer)
            dims = dict(hidden_size=PROJECTION_DIM, intermediate_size=64, **common)
            config = Siglip2Config(
                text_config={**text, **dims},
                vision_config=dict(num_patches=SIGLIP2_NUM_PATCHES, patch_size=SIGLIP2_PATCH_SIZE, **dims),
            )
            model = Siglip2Model(config)
            # NaFlex: images are resized to at most max_num_patches patches, then padded;
            # the processor also returns pixel_attention_mask and spatial_shapes.
            image_processor = Siglip2ImageProcessorPil(
                patch_size=SIGLIP2_PATCH_SIZE, max_num_patches=SIGLIP2_NUM_PATCHES
            )
            processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
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


def _save(path: Path, model, processor) -> None:
    path.mkdir(parents=True, exist_ok=True)
    config_logger = logging.getLogger("transformers.configuration_utils")
    quiet = _DropDefaultConfigTokenWarning()
    config_logger.addFilter(quiet)
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        config_logger.removeFilter(quiet)
    processor.save_pretrained(path)
    # transformers 5 nests the image processor inside processor_config.json; also write the
    # classic preprocessor_config.json for loaders that only look there.
    processor.image_processor.save_pretrained(path)
    _write_reference_tokenizer_files(path, processor.tokenizer)


# What the real repos ship beside tokenizer_config.json, and what transformers 5's save_pretrained leaves out:
# openai/clip-* and laion/CLIP-*: vocab.json + merges.txt + tokenizer.json + special_tokens_map.json;
# google/siglip-*: spiece.model + special_tokens_map.json; google/siglip2-*: tokenizer.model + tokenizer.json +
# special_tokens_map.json (checked against the stored Hub file listings; see tests/test_model_layouts.py).
_SAVE_ONLY_KEYS = ("vocab_file", "is_local", "local_files_only")  # load-time paths transformers echoes back


def _write_reference_tokenizer_files(path: Path, tokenizer) -> None:
    special = {name: str(getattr(tokenizer, name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token",
                                                                  "mask_token") if getattr(tokenizer, name, None)}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if any(key in config for key in _SAVE_ONLY_KEYS):
        config_file.write_text(json.dumps({k: v for k, v in config.items() if k not in _SAVE_ONLY_KEYS}, indent=2))
    if getattr(tokenizer, "tiny_tokenizer_model", None):
        (path / "tokenizer.model").write_bytes(tokenizer.tiny_tokenizer_model)
    if type(tokenizer).__name__ == "CLIPTokenizer":
        # openai's vocab.json / merges.txt: the BPE model inside tokenizer.json, in the original two-file form.
        bpe = json.loads((path / "tokenizer.json").read_text())["model"]
        (path / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False))
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
        (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _siglip2_text(tokenizer) -> dict:
    """SigLIP 2's text config around its tokenizer (64-token text), for both the NaFlex and fixed-resolution kinds."""
    return dict(vocab_size=len(tokenizer), max_position_embeddings=SIGLIP2_TEXT_LEN,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, projection_size=PROJECTION_DIM)


def save_tiny_clip(path, kind: str = "clip", image_size: int = 32, seed: int = 0) -> Path:
    """Write a random-init tiny `kind` checkpoint (model, tokenizer, image processor) to `path`.

    kind is one of KINDS or EXTRA_KINDS. Features are PROJECTION_DIM wide for every kind. "siglip2" ignores
    image_size: its NaFlex processor sizes images by patch count (see SIGLIP2_NUM_PATCHES). Each kind saves the
    tokenizer class and files its real Hub repos carry (CLIPTokenizer with vocab.json/merges.txt/tokenizer.json,
    SiglipTokenizer with spiece.model, GemmaTokenizer with tokenizer.model/tokenizer.json for both SigLIP 2 kinds).
    """
    path = Path(path)
    model, processor = _build(kind, image_size, seed)
    _save(path, model, processor)
    return path


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


# --------------------------------------------------------------------------- training


def _combos() -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES]


def _retrieval_metrics(text_emb, img_emb, labels, per_combo: int) -> dict[str, float]:
    """Metrics from L2-normalised embeddings of the plain captions (in _combos() order) and a gallery."""
    combos = _combos()
    order = (text_emb @ img_emb.T).argsort(dim=1, descending=True)
    top1 = sum(labels[order[i, 0]] == combo for i, combo in enumerate(combos)) / len(combos)
    topk = sum(all(labels[j] == combo for j in order[i, :per_combo].tolist()) for i, combo in enumerate(combos))
    img_sims = img_emb @ img_emb.T
    img_sims.fill_diagonal_(-2.0)  # a query must not retrieve itself
    img_top1 = sum(labels[j] == labels[i] for i, j in enumerate(img_sims.argmax(dim=1).tolist())) / len(labels)
    return {"text_top1": top1, "text_topk": topk / len(combos), "image_top1": img_top1}


def _encode_eval(tokenizer, image_processor, per_combo: int, seed: int):
    gallery = shapes_gallery(per_combo=per_combo, seed=seed)
    text = tokenizer([caption_for(c, s) for c, s in _combos()], padding=True, truncation=True, return_tensors="pt")
    pixel_values = image_processor([im for *_, im in gallery], return_tensors="pt").pixel_values
    return dict(text), pixel_values, [(c, s) for c, s, _ in gallery]


def _eval_embeddings(model, text, pixel_values):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        text_emb = model.get_text_features(**text).pooler_output
        img_emb = model.get_image_features(pixel_values=pixel_values).pooler_output
    model.train(was_training)
    return torch.nn.functional.normalize(text_emb, dim=-1), torch.nn.functional.normalize(img_emb, dim=-1)


def shapes_retrieval_metrics(
    model, tokenizer, image_processor, per_combo: int = 2, seed: int = 1000
) -> dict[str, float]:
    """Retrieval on a fresh gallery (per_combo images of every colour x shape).

    text_top1: share of "a <colour> <shape>" queries whose best image has that colour and shape;
    text_topk: share whose top-`per_combo` images are all of that class;
    image_top1: share of gallery images whose nearest other image has the same class.
    """
    text, pixel_values, labels = _encode_eval(tokenizer, image_processor, per_combo, seed)
    return _retrieval_metrics(*_eval_embeddings(model, text, pixel_values), labels, per_combo)


def train_shapes_clip(
    path,
    seconds: float = 900,
    seed: int = 0,
    image_size: int = 32,
    max_steps: int = 1000,
    eval_every: int = 50,
) -> Path:
    """Train the tiny CLIP contrastively on coloured shapes (CPU, <= `seconds`) and save it to `path`.

    The time limit is only a safety net (the run stops early at perfect retrieval or at max_steps): a tight one made
    the model, and every semantic assertion on it, depend on how busy the machine was.

    Stops early once a held-out gallery is retrieved perfectly at two consecutive
    evaluations; the final metrics are written to `path / MARKER_FILE`.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    start = time.monotonic()
    path = Path(path)
    (path / MARKER_FILE).unlink(missing_ok=True)
    model, processor = _build("clip", image_size, seed)
    # Save the processor first and preprocess through what was saved, so training sees
    # exactly the inputs that code loading the folder via Auto classes will produce.
    processor.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)

    # One thread on purpose: with these tiny matrices a second thread buys nothing, and
    # on 2 busy cores OpenMP's spinning barrier made each step 20-40x slower (measured
    # ~0.5-1.2 s vs ~25 ms per step). One thread also keeps results reproducible.
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps, loss, converged = _train_loop(
            model, tokenizer, image_processor, start, seconds, seed, max_steps, eval_every
        )
    finally:
        torch.set_num_threads(old_threads)

    model.eval()
    metrics = shapes_retrieval_metrics(model, tokenizer, image_processor, per_combo=3, seed=500_000)
    model.save_pretrained(path, safe_serialization=True)
    # The classic preprocessor_config.json too, as save_tiny_clip writes it.
    image_processor.save_pretrained(path)
    report = {"steps": steps, "seconds": round(time.monotonic() - start, 2), "loss": round(loss, 4), **metrics}
    if steps < max_steps and not converged:
        logger.warning("shapes CLIP hit the %.0f s limit after %d steps; retrieval may be weak", seconds, steps)
    logger.info("shapes CLIP trained: %s", report)
    (path / MARKER_FILE).write_text(json.dumps(report, indent=2))
    return path


def _train_loop(
    model, tokenizer, image_processor, start, seconds, seed, max_steps, eval_every
) -> tuple[int, float, bool]:
    """Run the optimisation; returns (steps, last loss, stopped early because retrieval was perfect)."""
    combos = _combos()
    n_templates = len(CAPTION_TEMPLATES)
    captions = [caption_for(c, s, t) for c, s in combos for t in range(n_templates)]
    enc = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    all_ids = enc.input_ids.view(len(combos), n_templates, -1)
    all_mask = enc.attention_mask.view(len(combos), n_templates, -1)

    # A pool of distinct images per class, drawn and preprocessed once: doing it every
    # step would cost as much as the model. Seeds >= 1e6 keep it apart from the galleries
    # used for evaluation (500_000+) and by the tests (small seeds).
    pool_size = 200
    pool = torch.stack(
        [
            image_processor(
                [draw_shape(c, s, seed=1_000_000 + 10_000 * seed + k) for k in range(pool_size)], return_tensors="pt"
            ).pixel_values
            for c, s in combos
        ]
    )  # [class, k, 3, H, W]
    eval_text, eval_pixels, eval_labels = _encode_eval(tokenizer, image_processor, per_combo=3, seed=500_000)

    # Each batch holds every class twice. The loss is CLIP's symmetric cross-entropy over
    # image->text and text->image logits; the target spreads over same-class pairs so the
    # duplicate is not pushed away as a negative (it also pulls same-class images together,
    # which image->image search needs).
    per_class = 2
    cls = torch.arange(len(combos)).repeat(per_class)
    same = (cls[:, None] == cls[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)

    rng = random.Random(seed)
    steps, loss, perfect = 0, float("nan"), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # A fixed temperature (logit scale 30) clustered classes better than a learned one,
        # which stays near its 14.3 start within this short run.
        model.logit_scale.data.fill_(math.log(30.0))
        model.logit_scale.requires_grad_(False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
        warmup = 30
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, max_steps) / max_steps))
        )
        while steps < max_steps and time.monotonic() - start < seconds:
            pick = torch.tensor([rng.randrange(pool_size) for _ in cls])
            tmpl = torch.tensor([rng.randrange(n_templates) for _ in cls])
            out = model(input_ids=all_ids[cls, tmpl], attention_mask=all_mask[cls, tmpl], pixel_values=pool[cls, pick])
            logits = out.logits_per_image
            batch_loss = 0.5 * (
                torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
            )
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            steps += 1
            loss = batch_loss.item()
            if steps % eval_every == 0:
                metrics = _retrieval_metrics(*_eval_embeddings(model, eval_text, eval_pixels), eval_labels, per_combo=3)
                logger.info("step %d loss %.3f %s (%.1f s)", steps, loss, metrics, time.monotonic() - start)
                # Two perfect evaluations in a row: more steps would only cost time.
                perfect = perfect + 1 if min(metrics.values()) == 1.0 else 0
                if perfect >= 2:
                    break
        model.logit_scale.requires_grad_(True)
    return steps, loss, perfect >= 2


def cached_shapes_clip(root_dir, seconds: float = 900, seed: int = 0) -> Path:
    """Train the shapes CLIP into root_dir/"shapes-clip" once; later calls reuse the finished folder."""
    path = Path(root_dir) / "shapes-clip"
    if not (path / MARKER_FILE).exists():
        train_shapes_clip(path, seconds=seconds, seed=seed)
    return path

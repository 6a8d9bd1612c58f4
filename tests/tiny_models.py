"""Offline tiny CLIP/SigLIP checkpoints and a synthetic coloured-shapes dataset for tests."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, processors, trainers
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


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2), math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2)) for k in range(3)]
    elif shape == "cross":
        w = 0.36  # arm half-width relative to r: thick enough to survive downsampling to 32 px
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x * c - y * s, x * s + y * c) for x, y in base]
    else:  # square
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x * c - y * s, x * s + y * c) for x, y in [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]]
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
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        # Small rotations only: large ones would make a square look like a diamond.
        angle = math.radians(rng.uniform(-12, 12))
        draw.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=fill)
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


def _byte_level_bpe(normalizer, pre_tokenizer, end_of_word_suffix: str | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges until every vocabulary word is one token; keep all 256 byte symbols.

    Keeping the full byte alphabet (and its end-of-word variants) means any text,
    emoji and CJK included, still tokenizes into known byte tokens instead of failing.
    """
    kwargs = {"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}
    tok = Tokenizer(models.BPE(**kwargs))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=1, initial_alphabet=ByteLevel.alphabet(), show_progress=False, **kwargs
    )
    tok.train_from_iterator([" ".join(_vocab_words())], trainer)
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    alphabet = sorted(ByteLevel.alphabet())
    symbols = alphabet + ([c + end_of_word_suffix for c in alphabet] if end_of_word_suffix else [])
    vocab: dict[str, int] = {}
    for s in symbols + ["".join(m) for m in merges]:
        vocab.setdefault(s, len(vocab))
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


def _siglip_tokenizer():
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast

    # SiglipTokenizer needs sentencepiece (not installed), so AutoTokenizer has no class
    # registered for "siglip"; a generic tokenizers-backed tokenizer saved as
    # tokenizer.json is what it falls back to, with or without sentencepiece.
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    pre_tokenizer = ByteLevel(add_prefix_space=True)
    vocab, merges = _byte_level_bpe(normalizer, pre_tokenizer, None)
    for special in ("<unk>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    # Like the real SigLIP tokenizer: no BOS, append </s>, pad with </s> (the model pools the last position).
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="</s>",
        pad_token="</s>",
        model_max_length=MAX_TEXT_LEN,
        model_input_names=["input_ids", "attention_mask"],
    )


def _siglip2_tokenizer():
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    # Siglip2Tokenizer is a Gemma-style BPE with byte fallback built from vocab+merges,
    # so it can be created offline; learn merges with its own normalizer/pre-tokenizer.
    template = Siglip2Tokenizer().backend_tokenizer
    tok = Tokenizer(models.BPE())
    tok.normalizer = template.normalizer
    tok.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False)
    # The normalizer turns spaces into "▁" before pre-tokenization, so a whole caption would
    # be one "word"; train on single words (bare and space-prefixed) to get "▁red"-style pieces.
    words = _vocab_words()
    tok.train_from_iterator(words + [" " + w for w in words], trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) for m in model["merges"]]
    vocab = {s: i for i, s in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for b in range(256):  # byte-fallback pieces, as in Gemma's vocabulary
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    # Siglip2Processor hard-codes max_length=64 for text, so the tokenizer matches it.
    return Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=SIGLIP2_TEXT_LEN)


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
        elif kind == "siglip":
            tokenizer = _siglip_tokenizer()
            text = dict(
                vocab_size=len(tokenizer),
                max_position_embeddings=MAX_TEXT_LEN,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id,
                projection_size=PROJECTION_DIM,
            )
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
            text = dict(
                vocab_size=len(tokenizer),
                max_position_embeddings=SIGLIP2_TEXT_LEN,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                projection_size=PROJECTION_DIM,
            )
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
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
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


def save_tiny_clip(path, kind: str = "clip", image_size: int = 32, seed: int = 0) -> Path:
    """Write a random-init tiny `kind` checkpoint (model, tokenizer, image processor) to `path`."""
    path = Path(path)
    model, processor = _build(kind, image_size, seed)
    _save(path, model, processor)
    return path


# --------------------------------------------------------------------------- training


def _embed(model, tokenizer, image_processor, texts=None, images=None):
    """L2-normalised text/image embeddings, encoded the way production code would."""
    out = []
    with torch.no_grad():
        if texts is not None:
            enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            out.append(torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1))
        if images is not None:
            pv = image_processor(images, return_tensors="pt").pixel_values
            out.append(torch.nn.functional.normalize(model.get_image_features(pixel_values=pv).pooler_output, dim=-1))
    return out


def shapes_retrieval_metrics(model, tokenizer, image_processor, per_combo: int = 2, seed: int = 1000) -> dict:
    """Retrieval quality on a fresh gallery: text->image top-1/top-k and image->image top-1 accuracy."""
    gallery = shapes_gallery(per_combo=per_combo, seed=seed)
    labels = [(c, s) for c, s, _ in gallery]
    combos = [(c, s) for c in COLORS for s in SHAPES]
    was_training = model.training
    model.eval()
    text_emb, img_emb = _embed(
        model, tokenizer, image_processor, texts=[caption_for(c, s) for c, s in combos], images=[im for *_, im in gallery]
    )
    model.train(was_training)
    sims = text_emb @ img_emb.T
    order = sims.argsort(dim=1, descending=True)
    top1 = sum(labels[order[i, 0]] == combo for i, combo in enumerate(combos)) / len(combos)
    topk = sum(all(labels[j] == combo for j in order[i, :per_combo].tolist()) for i, combo in enumerate(combos)) / len(combos)
    img_sims = img_emb @ img_emb.T
    img_sims.fill_diagonal_(-2.0)  # a query must not retrieve itself
    nn = img_sims.argmax(dim=1).tolist()
    img_top1 = sum(labels[j] == labels[i] for i, j in enumerate(nn)) / len(labels)
    return {"text_top1": top1, "text_topk": topk, "image_top1": img_top1}


def train_shapes_clip(
    path, seconds: float = 60, seed: int = 0, image_size: int = 32, max_steps: int = 1500, eval_every: int = 50
) -> Path:
    """Train the tiny CLIP contrastively on coloured shapes (CPU, <= `seconds`) and save it to `path`."""
    from transformers import AutoImageProcessor, AutoTokenizer

    start = time.monotonic()
    path = Path(path)
    model, processor = _build("clip", image_size, seed)
    # Save the processor first and preprocess through what was saved, so training sees
    # exactly the inputs that code loading the folder via Auto classes will produce.
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER_FILE).unlink(missing_ok=True)
    processor.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds OpenMP sync, 100x slower under load
    rng = random.Random(seed)
    combos = [(c, s) for c in COLORS for s in SHAPES]
    n_templates = len(CAPTION_TEMPLATES)
    # Tokenize every caption once: [combo, template, seq].
    captions = [caption_for(c, s, t) for c, s in combos for t in range(n_templates)]
    enc = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
    all_ids = enc.input_ids.view(len(combos), n_templates, -1)
    all_mask = enc.attention_mask.view(len(combos), n_templates, -1)

    # A pool of distinct training images per combo; drawing + preprocessing on every step
    # would cost more than the model itself. Seeds >= 1e6 keep them apart from test galleries.
    pool_per_combo = 48
    pool = torch.stack(
        [
            image_processor(
                [draw_shape(c, s, seed=1_000_000 + seed * 10_000 + k) for k in range(pool_per_combo)], return_tensors="pt"
            ).pixel_values
            for c, s in combos
        ]
    )  # [combo, k, 3, H, W]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
        warmup = 30
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps)),
        )
        n = len(combos)
        step = 0
        good_evals = 0
        metrics: dict = {}
        while step < max_steps and time.monotonic() - start < seconds:
            # One image of every combo per batch: the standard CLIP loss treats all other
            # batch items as negatives, so duplicates of a class would be false negatives.
            pick = torch.tensor([rng.randrange(pool_per_combo) for _ in range(n)])
            tmpl = torch.tensor([rng.randrange(n_templates) for _ in range(n)])
            idx = torch.arange(n)
            out = model(
                input_ids=all_ids[idx, tmpl],
                attention_mask=all_mask[idx, tmpl],
                pixel_values=pool[idx, pick],
                return_loss=True,
            )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % eval_every == 0:
                metrics = shapes_retrieval_metrics(model, tokenizer, image_processor, seed=500_000)
                logger.info("step %d loss %.3f %s", step, out.loss.item(), metrics)
                # Stop early once held-out retrieval has been perfect twice in a row.
                good_evals = good_evals + 1 if min(metrics.values()) == 1.0 else 0
                if good_evals >= 2:
                    break
        model.eval()
    torch.set_num_threads(old_threads)

    metrics = shapes_retrieval_metrics(model, tokenizer, image_processor, seed=500_000)
    model.save_pretrained(path, safe_serialization=True)
    image_processor.save_pretrained(path)
    report = {"steps": step, "seconds": round(time.monotonic() - start, 2), "loss": out.loss.item(), **metrics}
    logger.info("shapes CLIP trained: %s", report)
    (path / MARKER_FILE).write_text(json.dumps(report, indent=2))
    return path


def cached_shapes_clip(root_dir, seconds: float = 60, seed: int = 0) -> Path:
    """Train the shapes CLIP into root_dir/"shapes-clip" once; later calls reuse the folder."""
    path = Path(root_dir) / "shapes-clip"
    if not (path / MARKER_FILE).exists():
        train_shapes_clip(path, seconds=seconds, seed=seed)
    return path

"""Training tiny models contrastively on coloured shapes, so tests can assert that search finds the right shapes: the
English CLIP, and a SigLIP 2-style model that reads English and Russian (one loop for both)."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import torch

from .checkpoints import _build, save_model
from .shapes import caption_for, caption_templates, combos, draw_shape, shapes_gallery
from .tokenization import _write_reference_tokenizer_files, siglip_reference_ids

logger = logging.getLogger(__name__)

MARKER_FILE = "train_metrics.json"  # written last by the trainers, so it marks a complete folder

# The recipe (every value here changes the weights; cache.py hashes this module's source with them).
MAX_STEPS = 1600  # the usual stop is earlier: two perfect evaluations in a row (1000 ended unconverged on an EPYC)
EVAL_EVERY = 50  # steps between evaluations on the held-out gallery
EVAL_SEED, EVAL_PER_COMBO = 500_000, 3  # the held-out gallery: 3 images per class, seeds apart from the tests'
POOL_SEED, POOL_PER_CLASS = 1_000_000, 200  # training images: 200 distinct drawings per class, drawn once
BATCH_PER_CLASS = 2  # each batch holds every class twice
LOGIT_SCALE = 30.0  # fixed temperature: clustered classes better than a learned one, which stays near its 14.3 start
LEARNING_RATE, WEIGHT_DECAY, WARMUP_STEPS, GRAD_CLIP = 2e-3, 0.01, 30, 1.0  # AdamW, linear warm-up then cosine


def clip_text_inputs(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """CLIP's text inputs: its tokenizer's own special tokens, padded to the longest, with the attention mask."""
    return dict(tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))


def siglip_text_inputs(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """SigLIP 2's text inputs as big_vision evaluates it: ids only, EOS, right-padded to 64 (siglip_reference_ids)."""
    return {"input_ids": siglip_reference_ids(tokenizer, texts)}


def _retrieval_metrics(text_embs: dict, img_emb, labels, per_combo: int) -> dict[str, float]:
    """Metrics from L2-normalised embeddings of the plain captions (in combos() order, one tensor per language) and
    a gallery. English keys are bare ("text_top1"), other languages' carry their code ("text_top1_ru")."""
    classes = combos()
    metrics = {}
    for lang, text_emb in text_embs.items():
        suffix = "" if lang == "en" else f"_{lang}"
        order = (text_emb @ img_emb.T).argsort(dim=1, descending=True)
        top1 = sum(labels[order[i, 0]] == combo for i, combo in enumerate(classes)) / len(classes)
        topk = sum(all(labels[j] == combo for j in order[i, :per_combo].tolist()) for i, combo in enumerate(classes))
        metrics.update({f"text_top1{suffix}": top1, f"text_topk{suffix}": topk / len(classes)})
    img_sims = img_emb @ img_emb.T
    img_sims.fill_diagonal_(-2.0)  # a query must not retrieve itself
    img_top1 = sum(labels[j] == labels[i] for i, j in enumerate(img_sims.argmax(dim=1).tolist())) / len(labels)
    return {**metrics, "image_top1": img_top1}


def _encode_eval(tokenizer, image_processor, per_combo: int, seed: int, languages, text_inputs):
    gallery = shapes_gallery(per_combo=per_combo, seed=seed)
    texts = {lang: text_inputs(tokenizer, [caption_for(c, s, 0, lang) for c, s in combos()]) for lang in languages}
    pixel_values = image_processor([im for *_, im in gallery], return_tensors="pt").pixel_values
    return texts, pixel_values, [(c, s) for c, s, _ in gallery]


def _eval_embeddings(model, texts: dict, pixel_values):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        text_embs = {lang: model.get_text_features(**text).pooler_output for lang, text in texts.items()}
        img_emb = model.get_image_features(pixel_values=pixel_values).pooler_output
    model.train(was_training)
    normalize = torch.nn.functional.normalize
    return {lang: normalize(emb, dim=-1) for lang, emb in text_embs.items()}, normalize(img_emb, dim=-1)


def shapes_retrieval_metrics(
    model, tokenizer, image_processor, per_combo: int = 2, seed: int = 1000, languages=("en",),
    text_inputs=clip_text_inputs,
) -> dict[str, float]:
    """Retrieval on a fresh gallery (per_combo images of every colour x shape).

    text_top1: share of "a <colour> <shape>" queries whose best image has that colour and shape;
    text_topk: share whose top-`per_combo` images are all of that class (both per language: "_ru" for Russian);
    image_top1: share of gallery images whose nearest other image has the same class.
    """
    texts, pixel_values, labels = _encode_eval(tokenizer, image_processor, per_combo, seed, languages, text_inputs)
    return _retrieval_metrics(*_eval_embeddings(model, texts, pixel_values), labels, per_combo)


def train_shapes_clip(
    path,
    seconds: float = 900,
    seed: int = 0,
    image_size: int = 32,
    max_steps: int = MAX_STEPS,
    eval_every: int = EVAL_EVERY,
) -> Path:
    """Train the tiny CLIP contrastively on coloured shapes (CPU, <= `seconds`) and save it to `path`.

    The time limit is only a safety net (the run stops early at perfect retrieval or at max_steps): a tight one made
    the model, and every semantic assertion on it, depend on how busy the machine was.

    Stops early once a held-out gallery is retrieved perfectly at two consecutive evaluations; the final metrics
    (and "converged": whether it stopped that way) are written to `path / MARKER_FILE`.
    """
    return _train(path, "clip", ("en",), clip_text_inputs, seconds, seed, image_size, max_steps, eval_every)


def train_bilingual_siglip(
    path,
    seconds: float = 900,
    seed: int = 0,
    image_size: int = 32,
    max_steps: int = MAX_STEPS,
    eval_every: int = EVAL_EVERY,
) -> Path:
    """Train a tiny fixed-resolution SigLIP 2 (model_type "siglip", GemmaTokenizer learnt from English and Russian
    captions, files as save_tiny_clip(kind="siglip2-fixres") writes them) on the shapes with captions in both
    languages, text preprocessed by `siglip_reference_ids` (big_vision's SigLIP 2 recipe). The loss is the CLIP
    recipe's softmax cross-entropy, not SigLIP's sigmoid loss: enough for a test model. Stops early once held-out
    retrieval is perfect in both languages (text_top1/text_topk and their "_ru" twins, image_top1)."""
    return _train(path, "siglip2-fixres", ("en", "ru"), siglip_text_inputs, seconds, seed, image_size, max_steps,
                  eval_every)


def _train(path, kind, languages, text_inputs, seconds, seed, image_size, max_steps, eval_every) -> Path:
    from transformers import AutoImageProcessor, AutoTokenizer

    start = time.monotonic()
    path = Path(path)
    (path / MARKER_FILE).unlink(missing_ok=True)
    model, processor = _build(kind, image_size, seed, languages)
    # Save the processor first and preprocess through what was saved, so training sees
    # exactly the inputs that code loading the folder via Auto classes will produce.
    processor.save_pretrained(path)
    if kind != "clip":  # the real repos' tokenizer files (tokenizer.model beside tokenizer.json), as save_tiny_clip
        processor.image_processor.save_pretrained(path)
        _write_reference_tokenizer_files(path, processor.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)

    # One thread on purpose: with these tiny matrices a second thread buys nothing, and
    # on 2 busy cores OpenMP's spinning barrier made each step 20-40x slower (measured
    # ~0.5-1.2 s vs ~25 ms per step). One thread also keeps results reproducible.
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps, loss, converged = _train_loop(
            model, tokenizer, image_processor, start, seconds, seed, max_steps, eval_every, languages, text_inputs
        )
    finally:
        torch.set_num_threads(old_threads)

    model.eval()
    metrics = shapes_retrieval_metrics(model, tokenizer, image_processor, per_combo=EVAL_PER_COMBO, seed=EVAL_SEED,
                                       languages=languages, text_inputs=text_inputs)
    save_model(model, path)
    # The classic preprocessor_config.json too, as save_tiny_clip writes it.
    image_processor.save_pretrained(path)
    report = {"steps": steps, "seconds": round(time.monotonic() - start, 2), "loss": round(loss, 4),
              "converged": converged, **metrics}
    if steps < max_steps and not converged:
        logger.warning("shapes %s hit the %.0f s limit after %d steps; retrieval may be weak", kind, seconds, steps)
    logger.info("shapes %s trained: %s", kind, report)
    (path / MARKER_FILE).write_text(json.dumps(report, indent=2))
    return path


def _learning_rate_factor(step: int, max_steps: int) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine decay to 0 at max_steps."""
    return min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))


def _train_loop(
    model, tokenizer, image_processor, start, seconds, seed, max_steps, eval_every, languages, text_inputs
) -> tuple[int, float, bool]:
    """Run the optimisation; returns (steps, last loss, stopped early because retrieval was perfect).

    Each sample's caption is drawn uniformly from every template of every language in `languages`; `text_inputs`
    turns texts into the text tower's inputs (the same function evaluates)."""
    classes = combos()
    per_class = [(lang, t) for lang in languages for t in range(len(caption_templates(lang)))]
    n_templates = len(per_class)
    captions = [caption_for(c, s, t, lang) for c, s in classes for lang, t in per_class]
    all_text = {name: value.view(len(classes), n_templates, -1)
                for name, value in text_inputs(tokenizer, captions).items()}

    # A pool of distinct images per class, drawn and preprocessed once: doing it every step would cost as much as
    # the model. Its seeds (POOL_SEED+) keep it apart from the evaluation gallery (EVAL_SEED+) and the tests'.
    pool = torch.stack(
        [
            image_processor(
                [draw_shape(c, s, seed=POOL_SEED + 10_000 * seed + k) for k in range(POOL_PER_CLASS)],
                return_tensors="pt",
            ).pixel_values
            for c, s in classes
        ]
    )  # [class, k, 3, H, W]
    eval_text, eval_pixels, eval_labels = _encode_eval(tokenizer, image_processor, EVAL_PER_COMBO, EVAL_SEED,
                                                       languages, text_inputs)

    # The loss is CLIP's symmetric cross-entropy over image->text and text->image logits; the target spreads over
    # same-class pairs so a class's second sample is not pushed away as a negative (it also pulls same-class images
    # together, which image->image search needs).
    cls = torch.arange(len(classes)).repeat(BATCH_PER_CLASS)
    same = (cls[:, None] == cls[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)

    rng = random.Random(seed)
    steps, loss, perfect = 0, float("nan"), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.logit_scale.data.fill_(math.log(LOGIT_SCALE))
        model.logit_scale.requires_grad_(False)
        bias = getattr(model, "logit_bias", None)  # SigLIP's: a constant shift, which softmax cross-entropy ignores
        if bias is not None:
            bias.requires_grad_(False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _learning_rate_factor(step, max_steps))
        while steps < max_steps and time.monotonic() - start < seconds:
            pick = torch.tensor([rng.randrange(POOL_PER_CLASS) for _ in cls])
            tmpl = torch.tensor([rng.randrange(n_templates) for _ in cls])
            out = model(**{name: value[cls, tmpl] for name, value in all_text.items()}, pixel_values=pool[cls, pick])
            logits = out.logits_per_image
            batch_loss = 0.5 * (
                torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
            )
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            sched.step()
            steps += 1
            loss = batch_loss.item()
            if steps % eval_every == 0:
                metrics = _retrieval_metrics(*_eval_embeddings(model, eval_text, eval_pixels), eval_labels,
                                             per_combo=EVAL_PER_COMBO)
                logger.info("step %d loss %.3f %s (%.1f s)", steps, loss, metrics, time.monotonic() - start)
                # Two perfect evaluations in a row: more steps would only cost time.
                perfect = perfect + 1 if min(metrics.values()) == 1.0 else 0
                if perfect >= 2:
                    break
        model.logit_scale.requires_grad_(True)
        if bias is not None:
            bias.requires_grad_(True)
    return steps, loss, perfect >= 2

"""Random-weight stand-ins for real checkpoints: each Hub repo's REAL config (benchmarks/configs/<owner>--<name>/,
sources in its README.md) with random weights, saved with that repo's image processor and a tokenizer of the class
the repo declares. Same compute and memory as the real model (the 256k Gemma token table of SigLIP 2 included),
none of its knowledge: what query cost and start-up are measured with, since no weights can be downloaded here.

    python -m benchmarks.models MODEL_ID FOLDER     # what random_model runs in a child process
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, fresh_folder
from clipsearch.core.encoder import DEFAULT_MODEL, LIGHT_MODEL  # noqa: F401  the app's default and its light one

CONFIGS = Path(__file__).resolve().parent / "configs"
BUILD_VERSION = "models-1"  # bump to invalidate cached folders
TEXT_TOKENS = 64  # SigLIP and SigLIP 2 repos: model_max_length 64, padded on the right


def slug(model_id: str) -> str:
    return model_id.replace("/", "--")


def family(model_id: str) -> str:
    """clip (CLIPTokenizer, BPE), siglip (SiglipTokenizer, sentencepiece, lowercasing) or siglip2 (GemmaTokenizer:
    the fixed-resolution SigLIP 2 repos declare model_type "siglip" with a 256k vocabulary)."""
    config = json.loads((CONFIGS / slug(model_id) / "config.json").read_text())
    if config["model_type"] == "clip":
        return "clip"
    return "siglip2" if config["text_config"].get("vocab_size", 32000) > 100_000 else "siglip"


def known_models() -> list[str]:
    return sorted(folder.name.replace("--", "/", 1) for folder in CONFIGS.iterdir() if folder.is_dir())


def random_model(model_id: str, cache: Path) -> Path:
    """The stand-in's folder under cache/models, built once (in a child process, so its memory is not ours)."""
    digest = hashlib.sha256(BUILD_VERSION.encode())
    for name in ("config.json", "preprocessor_config.json"):
        digest.update((CONFIGS / slug(model_id) / name).read_bytes())
    folder = cache / "models" / f"{slug(model_id)}-{digest.hexdigest()[:12]}"
    if not (folder / "stand_in.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        child = subprocess.run([sys.executable, "-m", "benchmarks.models", model_id, str(folder)], cwd=ROOT,
                               capture_output=True, text=True)
        if child.returncode:
            raise RuntimeError(f"building the stand-in of {model_id} failed:\n{child.stderr[-3000:]}")
    return folder


def clip_tokenizer():
    """A CLIPTokenizer (CLIP's own normaliser and pre-tokeniser) with CLIP's id layout: 49,408 ids, <|startoftext|>
    at 49406 and <|endoftext|> (also the padding) at 49407, every word of the benchmarks' captions one token as in
    CLIP's real BPE for everyday words, the byte alphabet for anything else, unused ids as fillers. Token counts,
    and so the text tower's cost, are then what the real tokenizer gives for such queries."""
    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    from benchmarks.artifacts import CAPTIONS, PLACES, VERBS, WORDS

    template = CLIPTokenizer().backend_tokenizer
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.normalizer, learner.pre_tokenizer = template.normalizer, template.pre_tokenizer
    learner.train_from_iterator([*CAPTIONS, *WORDS, *VERBS, *PLACES], trainers.BpeTrainer(
        vocab_size=40_000, min_frequency=1, end_of_word_suffix="</w>", show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(c + "</w>" for c in alphabet), *sorted(learned["vocab"], key=learned["vocab"].get)]:
        vocab.setdefault(symbol, len(vocab))
    while len(vocab) < 49406:
        vocab[f"<|unused{len(vocab)}|>"] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def copy_tiny_tokenizer(kind: str, folder: Path) -> None:
    """The tokenizer files of testkit's tiny `kind` model (the class and files the real repos carry), 64 tokens padded
    on the right. Their vocabulary is tiny, which costs no time here (SigLIP text is always padded to 64 tokens) but
    leaves the real tokenizer's memory out of every start-up figure: see benchmarks.tokenizer_memory."""
    from testkit.models import save_tiny_clip

    with tempfile.TemporaryDirectory() as tiny:
        save_tiny_clip(tiny, kind)
        for path in Path(tiny).iterdir():
            if path.name.startswith(("tokenizer", "special_tokens", "spiece")):
                shutil.copy(path, folder / path.name)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.update(model_max_length=TEXT_TOKENS, padding_side="right")
    settings.pop("processor_class", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))


def build(model_id: str, folder: Path) -> None:
    """The stand-in of `model_id` (random weights, seeded) saved as a model folder at `folder`."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    started = time.perf_counter()
    source = CONFIGS / slug(model_id)
    config = AutoConfig.from_pretrained(source)
    kind = family(model_id)
    tokenizer = clip_tokenizer() if kind == "clip" else None
    if tokenizer is not None and config.text_config.eos_token_id != 2:  # 2: legacy pooling at the largest id
        # the text tower pools at its config's eos id: it must be this tokenizer's, or every text gets one vector
        config.text_config.update({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                   "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    tmp = fresh_folder(folder.with_name(folder.name + ".partial"))  # a previous run's partial build is replaced
    model.save_pretrained(tmp, safe_serialization=True)
    AutoImageProcessor.from_pretrained(source, backend="pil").save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    else:
        copy_tiny_tokenizer("siglip" if kind == "siglip" else "siglip2-fixres", tmp)
    (tmp / "stand_in.json").write_text(json.dumps({"model_id": model_id, "version": BUILD_VERSION,
                                                   "build_seconds": round(time.perf_counter() - started, 1)}))
    if folder.exists():
        raise SystemExit(f"{folder} exists already; nothing was deleted. Move it away or choose another --cache.")
    tmp.rename(folder)


if __name__ == "__main__":
    build(sys.argv[1], Path(sys.argv[2]))

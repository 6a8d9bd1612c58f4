"""Tiny tokenizers of the real classes (CLIP, SigLIP, Gemma) learnt from the captions, and the files real repos ship."""

from __future__ import annotations

import io
import json
import re
import string
import tempfile
from collections import Counter
from pathlib import Path

from tokenizers.pre_tokenizers import ByteLevel

from .shapes import COLORS, RU_COLORS, RU_SHAPES, SHAPES, caption_for, caption_templates, combos

MAX_TEXT_LEN = 16  # CLIP and SigLIP 1 fixtures: max_position_embeddings and tokenizer model_max_length
SIGLIP2_TEXT_LEN = 64  # Siglip2Processor hard-codes max_length=64 for text, so SigLIP 2 tokenizers match it

# Extra everyday words so that common queries become real tokens instead of byte soup.
_EXTRA_WORDS = "an the image of with and in this is that shape colour color dark light".split()


def _vocab_words(languages: tuple[str, ...] = ("en",)) -> list[str]:
    words = set()
    for lang in languages:
        if lang == "en":
            words |= set(_EXTRA_WORDS) | set(COLORS) | set(SHAPES)
        else:
            words |= set(RU_COLORS.values()) | set(RU_SHAPES.values())
        for template in caption_templates(lang):
            words.update(w for w in template.split() if not w.startswith("{"))
    return sorted(words)


def _caption_corpus(languages: tuple[str, ...] = ("en",)) -> list[str]:
    """Every caption of every colour x shape in `languages`, plus each vocabulary word alone: what the tiny
    tokenizers learn from."""
    sentences = [caption_for(color, shape, seed, lang) for lang in languages for color, shape in combos()
                 for seed in range(len(caption_templates(lang)))]
    return sentences + _vocab_words(languages)


# --------------------------------------------------------------------------- CLIP: byte-level BPE


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
    """The real CLIPTokenizer (openai/clip-*, laion/CLIP-*) over a vocabulary learnt from the captions."""
    from transformers import CLIPTokenizer

    # An empty CLIPTokenizer carries the real CLIP normalizer/pre-tokenizer; reuse them
    # so the learned merges line up with how CLIPTokenizer splits text.
    template = CLIPTokenizer().backend_tokenizer
    vocab, merges = _byte_level_bpe(template.normalizer, template.pre_tokenizer, "</w>")
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TEXT_LEN)


# --------------------------------------------------------------------------- SigLIP and SigLIP 2: sentencepiece


def _train_sentencepiece(languages: tuple[str, ...] = ("en",), **options) -> bytes:
    """A tiny sentencepiece model (serialized ModelProto) trained on the captions in well under a second.

    One thread and a fixed corpus: the same bytes in every run, so models built on it are reproducible."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_caption_corpus(languages)), model_writer=model,
                                   num_threads=1,
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2, **options)
    return model.getvalue()


def _siglip_tokenizer():
    """The real SiglipTokenizer (sentencepiece, spiece.model) as google/siglip-* repos declare it in
    tokenizer_config.json, built on a tiny T5-style unigram model: <pad>=0, </s>=1, <unk>=2, no BOS; the
    tokenizer appends </s>, pads with </s> and lowercases (do_lower_case, its default, as the real repos use)."""
    from transformers import SiglipTokenizer

    proto = _train_sentencepiece(model_type="unigram", vocab_size=60, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "spiece.model"
        vocab_file.write_bytes(proto)
        # save_pretrained writes the loaded model proto back once this file is gone.
        return SiglipTokenizer(str(vocab_file), model_max_length=MAX_TEXT_LEN)


def _gemma_tokenizer(model_max_length: int = SIGLIP2_TEXT_LEN, languages: tuple[str, ...] = ("en",)):
    """The real GemmaTokenizer, as SigLIP 2 repos (fixed-resolution and NaFlex alike) declare it: a sentencepiece
    BPE model with byte fallback and Gemma's special ids (<pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4), converted
    by transformers into tokenizer.json. The sentencepiece file rides along as `tiny_tokenizer_model`, so that
    `_write_reference_tokenizer_files` can write tokenizer.model beside tokenizer.json as the real repos have it.
    GemmaTokenizer does not lowercase. `languages` ("en", "ru"): the captions it is learnt from; with Russian, every
    Cyrillic caption word is a token of its own (more room in the vocabulary), not byte fallback."""
    from transformers import GemmaTokenizer

    proto = _train_sentencepiece(
        languages, model_type="bpe", vocab_size=400 if languages == ("en",) else 600, pad_id=0, eos_id=1, bos_id=2,
        unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(proto)
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GemmaTokenizer", "model_max_length": model_max_length}))
        tokenizer = GemmaTokenizer.from_pretrained(folder)
    tokenizer.tiny_tokenizer_model = proto
    return tokenizer


def _siglip2_tokenizer():
    return _gemma_tokenizer(SIGLIP2_TEXT_LEN)


# --------------------------------------------------------------------------- SigLIP 2's reference text preprocessing

# Self-contained on purpose (torch and the tokenizer only, nothing else from testkit): the production encoder keeps
# its own copy, and a test checks that the two agree.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def siglip_reference_ids(tokenizer, texts: list[str], length: int = SIGLIP2_TEXT_LEN):
    """The input_ids big_vision's SigLIP 2 evaluation feeds the text tower, as a [len(texts), length] LongTensor.

    - lowercase ASCII letters only: tf.strings.lower with its default encoding maps A-Z to a-z and leaves every
      other character alone ("КРАСНЫЙ" stays uppercase, "É" too); no other normalisation;
    - the tokenizer's pieces without its special tokens, then EOS appended (no BOS, whatever the tokenizer's
      add_bos_token / post-processor say); special-token text typed by a user ("<eos>") stays plain text, as
      sentencepiece reads it, so it can never end a query early;
    - longer than `length`: the first length - 1 pieces, then EOS;
    - padded on the right with the pad id (Gemma's 0) to exactly `length`;
    - the model gets these ids only: no attention mask (the text tower pools the last position, pads included).
    """
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos or pad token: not a SigLIP tokenizer")
    texts = [text.translate(_ASCII_LOWER) for text in texts]
    pieces = tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                       verbose=False).input_ids if texts else []
    rows = [ids[: length - 1] + [eos] for ids in pieces]
    return torch.tensor([row + [pad] * (length - len(row)) for row in rows], dtype=torch.long).reshape(-1, length)


def siglip_tokenizer_json(tokenizer) -> str:
    """The tokenizer.json google/siglip-* repos gained in 2025 ("Upload tokenizer.json", 2.4 MB beside the 798 kB
    spiece.model), for a tiny SiglipTokenizer. Modelled on transformers' SiglipConverter (PR #29969, never merged;
    the uploads are by its co-author; the real file's content could not be read here): a Unigram model; normalizer
    [Lowercase when do_lower_case, punctuation removed, sentencepiece's charmap, runs of spaces -> one, strip];
    Metaspace pre-tokenization; `$A </s>`. It gives the same ids as SiglipTokenizer.

    transformers 5.23 never reads it for these repos: tokenizer_config.json declares SiglipTokenizer, a
    sentencepiece class that loads spiece.model (tokenizer.json would only lend its added tokens to a config without
    added_tokens_decoder). It is fetched all the same, like every tokenizer file a repo has."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers.convert_slow_tokenizer import import_protobuf

    # The protobuf module transformers itself parses sentencepiece files with: importing a second copy of the same
    # .proto (transformers.utils.sentencepiece_model_pb2_new) breaks its later loads ("duplicate file name").
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tokenizer.sp_model.serialized_model_proto())
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    fast = Tokenizer(Unigram(vocab, proto.trainer_spec.unk_id, byte_fallback=False))
    steps = [normalizers.Lowercase()] if tokenizer.do_lower_case else []
    steps.append(normalizers.Replace(Regex(f"[{re.escape(string.punctuation)}]"), ""))  # as SiglipTokenizer does
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    fast.normalizer = normalizers.Sequence([*steps, normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()])
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    fast.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    eos = str(tokenizer.eos_token)
    fast.post_processor = processors.TemplateProcessing(single=["$A", eos], pair=["$A", eos, "$B", eos],
                                                        special_tokens=[(eos, tokenizer.eos_token_id)])
    fast.add_special_tokens([str(tokenizer.pad_token), eos, str(tokenizer.unk_token)])
    return fast.to_str(pretty=True)


# --------------------------------------------------------------------------- files as the real repos ship them

# What the real repos ship beside tokenizer_config.json, and what transformers 5's save_pretrained leaves out:
# openai/clip-* and laion/CLIP-*: vocab.json + merges.txt + tokenizer.json + special_tokens_map.json;
# google/siglip-*: spiece.model + tokenizer.json + special_tokens_map.json; google/siglip2-*: tokenizer.model +
# tokenizer.json + special_tokens_map.json (checked against the stored Hub file listings; see
# tests/test_model_layouts.py).
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
    if type(tokenizer).__name__ == "SiglipTokenizer":
        (path / "tokenizer.json").write_text(siglip_tokenizer_json(tokenizer), encoding="utf-8")
    if type(tokenizer).__name__ == "CLIPTokenizer":
        # openai's vocab.json / merges.txt: the BPE model inside tokenizer.json, in the original two-file form.
        bpe = json.loads((path / "tokenizer.json").read_text())["model"]
        (path / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False))
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
        (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

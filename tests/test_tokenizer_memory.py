"""The tokenizer holds no more memory than it needs: the vocabulary dict and merges list that transformers 5.23's
GemmaTokenizer (SigLIP 2) keeps after building its Rust tokenizer (~120 MB for a 256k vocabulary,
benchmarks/results/tokenizer_memory.md) are dropped when the ids stay the same, and kept when they would not."""

from __future__ import annotations

from transformers import AutoTokenizer

from clipsearch.core.encoder import Encoder, drop_construction_tables, reference_ids
from testkit.models import save_tiny_clip

TEXTS = ["a red circle", "КРАСНЫЙ КРУГ на белом фоне", "红色的圆形", "دائرة حمراء", "लाल वृत्त", "🔴🟥", "<eos> typed",
         " ".join(["a photo of a big blue square on a plain background"] * 10)]


def test_the_encoder_drops_the_tables_and_tokenizes_as_the_class_does(tmp_path):
    folder = save_tiny_clip(tmp_path / "siglip2", "siglip2-fixres")
    fresh = AutoTokenizer.from_pretrained(folder)
    assert type(fresh).__name__ == "GemmaTokenizer" and fresh._vocab and fresh._merges  # the class keeps them
    encoder = Encoder.load(folder, device="cpu")
    assert encoder.tokenizer._vocab is None and encoder.tokenizer._merges is None
    length = encoder.info.text_max_length
    assert reference_ids(encoder.tokenizer, TEXTS, length).tolist() == reference_ids(fresh, TEXTS, length).tolist()
    assert encoder.tokenizer(TEXTS)["input_ids"] == fresh(TEXTS)["input_ids"]
    assert encoder.tokenizer.get_vocab() == fresh.get_vocab()


def test_a_tokenizer_that_reads_its_tables_keeps_them(tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(save_tiny_clip(tmp_path / "siglip2", "siglip2-fixres"))
    tokenize = type(tokenizer).__call__
    # a release whose tokenizer looks its pieces up in the dict
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *args, **kwargs: (
        len(self._vocab), tokenize(self, *args, **kwargs))[1])
    drop_construction_tables(tokenizer)
    assert tokenizer._vocab and tokenizer._merges
    assert tokenizer(TEXTS)["input_ids"] == AutoTokenizer.from_pretrained(tmp_path / "siglip2")(TEXTS)["input_ids"]

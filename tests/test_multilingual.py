"""Queries in other languages and scripts (issue #18): a tiny SigLIP 2-style model trained on English and Russian
captions finds the same shapes in both languages through the real builder and Searcher; the text reaches the
tokenizer as typed and is preprocessed as big_vision's SigLIP 2 evaluation does; a query in any script stays a
query, and only one with nothing in it is refused, with a sentence."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipsearch.core.encoder import Encoder
from clipsearch.core.errors import QueryError
from clipsearch.core.query import clean_text
from testkit.galleries import write_shapes_folder
from testkit.helpers import assert_sentence, run_build
from testkit.models import COLORS, LANGUAGES, SHAPES, cached_bilingual_siglip, caption_for, siglip_reference_ids

PER_COMBO = 5  # five pictures of each colour x shape, so a perfect top 5 is possible
MIN_PRECISION, MAX_GAP = 0.8, 0.05  # issue #18: precision@5 per language, and the most the languages may differ
COMBOS = [(c, s) for c in COLORS for s in SHAPES]
QUERIES = {lang: {combo: caption_for(*combo, 0, lang) for combo in COMBOS} for lang in LANGUAGES}  # "красный круг"

# What the encoder must hand the SigLIP 2 text tower, whatever the script (see siglip_reference_ids).
SPEC_TEXTS = [
    "A Red Circle",  # uppercase ASCII: lowercased
    "КРАСНЫЙ КРУГ",  # uppercase Cyrillic: NOT lowercased (tf.strings.lower folds ASCII only)
    "красный круг",
    "Ein GRÜNES Quadrat, Straße",  # Latin beyond ASCII: Ü stays, G-R-N-E-S fold
    "红色的圆形在白色背景上",  # Chinese
    "دائرة حمراء على خلفية بيضاء",  # Arabic, right to left
    "लाल वृत्त और नीला वर्ग",  # Hindi: virama and vowel signs are combining marks
    "🔴🟥👨\u200d👩\u200d👧",  # emoji only, a ZWJ sequence included
    "a RED круг, 红色 دائرة लाल 🔴",  # mixed scripts
    "<eos> a red circle <pad>",  # special tokens typed as text stay text
    " ".join(["a photo of a big red circle on a plain background"] * 12),  # far past 64 tokens: cut to 63 + EOS
]


def _kind(file_name: str) -> tuple[str, str]:
    color, shape, _ = file_name.rsplit(".", 1)[0].split("-")
    return color, shape


def _precision_at_5(ranked: dict[tuple[str, str], list[tuple[str, str]]]) -> float:
    """Mean share of the top 5 with the query's colour and shape."""
    return sum(sum(hit == combo for hit in hits[:5]) / 5 for combo, hits in ranked.items()) / len(ranked)


def _assert_precision(precision: dict[str, float]) -> None:
    for lang, value in precision.items():
        assert value >= MIN_PRECISION, f"precision@5 in {lang}: {value:.3f} < {MIN_PRECISION} ({precision})"
    assert abs(precision["en"] - precision["ru"]) <= MAX_GAP, f"languages differ by more than {MAX_GAP}: {precision}"


@pytest.fixture(scope="module")
def bilingual_model(tmp_path_factory) -> Path:
    """The tiny English/Russian SigLIP 2 (trained once into the persistent cache, about 30 s), copied so that no test
    can change the cached folder."""
    return Path(shutil.copytree(cached_bilingual_siglip(), tmp_path_factory.mktemp("trained") / "bilingual-siglip"))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Every colour x shape PER_COMBO times, English captions in metadata.jsonl, seeds the model never trained on."""
    root = tmp_path_factory.mktemp("multilingual") / "gallery"
    return root, write_shapes_folder(root, per_combo=PER_COMBO)


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, bilingual_model, gallery):
    """The real builder CLI, then the app's own start-up (verified artifacts, the manifest's model, precision auto)."""
    from clipsearch.serve.service import Settings, start

    out = tmp_path_factory.mktemp("built") / "artifacts"
    assert run_build("--images", gallery[0], "--model", bilingual_model, "--out", out, "--batch-size", "8") == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(os.environ, "CLIPSEARCH_CACHE", str(tmp_path_factory.mktemp("app-cache")))
        service = start(Settings(index_dir=str(out), index_repo="unused/unused", index_revision=None, endpoint=None,
                                 token=None))
    return service.searcher


def test_bilingual_tokenizer_has_cyrillic_words_and_round_trips(bilingual_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bilingual_model)
    assert type(tokenizer).__name__ == "GemmaTokenizer"
    assert {"tokenizer.model", "tokenizer.json"} <= {p.name for p in bilingual_model.iterdir()}
    for text in ["красный круг", "это зелёный треугольник", "на картинке жёлтый крест на однотонном фоне",
                 "фиолетовый квадрат", "КРАСНЫЙ КРУГ", "红色圆圈 🔴", "लाल वृत्त"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    # Caption words are tokens of their own, not byte fallback (<0xD0>...)
    for word in ["красный", "зелёный", "треугольник", "крест"]:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids)
        assert len(pieces) == 1, (word, pieces)


def test_reference_ids_follow_big_vision(bilingual_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bilingual_model)
    ids = siglip_reference_ids(tokenizer, SPEC_TEXTS)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert ids.dtype == torch.long and ids.shape == (len(SPEC_TEXTS), 64)
    assert torch.equal(ids[0], siglip_reference_ids(tokenizer, ["a red circle"])[0])  # ASCII folded
    assert not torch.equal(ids[1], ids[2])  # Cyrillic case kept
    for row, text in zip(ids.tolist(), SPEC_TEXTS):
        real = row[: row.index(eos) + 1] if eos in row else row
        assert real[-1] == eos and tokenizer.bos_token_id not in real, text
        assert row[len(real):] == [pad] * (64 - len(real)), text  # right padding
        assert eos not in real[:-1], text  # a typed "<eos>" is text, not an end
    assert ids[-1, -1] == eos  # longer than 64: 63 pieces, then EOS


def test_direct_encoding_finds_the_shapes_in_both_languages(bilingual_model, gallery):
    """The retrieval bounds with the model called directly on siglip_reference_ids: independent of the encoder."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(bilingual_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(bilingual_model)
    image_processor = AutoImageProcessor.from_pretrained(bilingual_model, backend="pil")
    folder, rows = gallery
    labels = [(r["color"], r["shape"]) for r in rows]
    with torch.no_grad():
        pixels = image_processor([Image.open(folder / r["file_name"]).convert("RGB") for r in rows],
                                 return_tensors="pt").pixel_values
        images = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        precision = {}
        for lang, queries in QUERIES.items():
            ids = siglip_reference_ids(tokenizer, list(queries.values()))
            texts = torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
            order = (texts @ images.T).argsort(dim=1, descending=True)[:, :5].tolist()
            precision[lang] = _precision_at_5({combo: [labels[j] for j in top] for combo, top in zip(queries, order)})
    print(f"\ndirect encoding, precision@5: {precision}")
    _assert_precision(precision)


def assert_encoder_spec(encoder: Encoder) -> None:
    """ENCODER SPEC (issue #18): for a SigLIP 2 model, Encoder.tokenize returns exactly
    {"input_ids": siglip_reference_ids(tokenizer, texts)}: ASCII-only lowercasing (uppercase Cyrillic stays), no other
    normalisation, no BOS, EOS appended, cut to 63 pieces + EOS, right-padded with the pad id to 64, no attention
    mask. The encoder keeps its own copy of that function (it imports nothing from testkit); this checks they agree."""
    expected = siglip_reference_ids(encoder.tokenizer, SPEC_TEXTS)
    got = encoder.tokenize(SPEC_TEXTS)
    ids = got.get("input_ids")
    wrong = [n for n in range(len(SPEC_TEXTS))
             if ids is None or tuple(ids.shape) != tuple(expected.shape) or ids[n].tolist() != expected[n].tolist()]
    assert sorted(got) == ["input_ids"] and not wrong, (
        f"ENCODER SPEC (issue #18, big_vision SigLIP 2 text): Encoder.tokenize returned keys {sorted(got)} (expected "
        f"['input_ids']); {len(wrong)} of {len(SPEC_TEXTS)} texts differ from siglip_reference_ids: "
        f"{[SPEC_TEXTS[n][:16] for n in wrong]}"
        + (f"; first, {SPEC_TEXTS[wrong[0]]!r}: got {ids[wrong[0]][:8].tolist()}..., expected "
           f"{expected[wrong[0]][:8].tolist()}..." if wrong and ids is not None else ""))


def test_searcher_finds_the_shapes_in_both_languages(searcher):
    """Every colour x shape query in English and in Russian through the app's Searcher (clean_text, the Encoder the
    app loads, FAISS), precision@5 within the bounds of issue #18.

    EXPECTED TO FAIL on the ENCODER SPEC assertion until clipsearch.core.encoder tokenizes SigLIP 2 text as
    big_vision does (what the model was trained with); test_direct_encoding_... checks the same bounds without it."""
    assert searcher.encoder.info.model_type == "siglip" and type(searcher.encoder.model).__name__ == "SiglipModel"
    assert searcher.encoder.text_graph is not None  # as the Space serves SigLIP: texts through the build's text graph
    precision = {lang: _precision_at_5({combo: [_kind(hit.file_name) for hit in searcher.search_text(query, 5)]
                                        for combo, query in queries.items()})
                 for lang, queries in QUERIES.items()}
    print(f"\nSearcher, precision@5: {precision}")
    assert_encoder_spec(searcher.encoder)  # ENCODER SPEC: fails until the encoder implements it (see above)
    _assert_precision(precision)


# --- text queries in any script stay queries ---------------------------------------------------------------------

UNTOUCHED = [
    "🔴🟥",  # emoji only
    "👨\u200d👩\u200d👧",  # a ZWJ sequence: one family, not three people
    "🇪🇸 ❤️ 🫨",  # flag (regional indicators), variation selector, an emoji newer than Python 3.11's Unicode tables
    "red круг 红色 دائرة लाल",  # mixed scripts
    "КРАСНЫЙ КРУГ",  # no case folding
    "دائرة حمراء",  # Arabic (RTL)
    "מעגל אדום",  # Hebrew (RTL)
    "\u202bدائرة\u202c red \u200fحمراء",  # bidi embedding and right-to-left mark
    "लाल वृत्त और नीला वर्ग",  # Hindi: combining vowel signs and virama
    "e\u0301cole",  # a combining acute accent: not composed to é (no NFC)
    "ｒｅｄ ｃｉｒｃｌｅ ﬁ ①",  # fullwidth letters, a ligature, a circled digit: not folded (no NFKC)
    "می\u200cخواهم",  # Persian with a zero-width non-joiner
]


@pytest.mark.parametrize("text", UNTOUCHED)
def test_any_script_reaches_the_tokenizer_untouched(text):
    assert clean_text(text) == text


def test_only_whitespace_and_control_characters_are_cleaned():
    assert clean_text("  красный\t\n круг\x00 ") == "красный круг"
    assert clean_text("دائرة\u2028\u3000حمراء\x1b[0m") == "دائرة حمراء [0m"
    assert clean_text("👨\u200d👩\u200d👧\r\n🔴") == "👨\u200d👩\u200d👧 🔴"
    assert clean_text("a\u200bred\ufeffcircle") == "a red circle"  # invisible spaces are spaces


@pytest.mark.parametrize("blank", ["", "   ", "\t\n\r", "\u3000\u00a0", "\x00\x1f\x7f", "\u200b", "\ufeff", "\u200d",
                                   "\u200e \u200f"])
def test_a_query_with_nothing_in_it_is_refused_with_a_sentence(blank):
    with pytest.raises(QueryError) as refused:
        clean_text(blank)
    assert_sentence(refused.value)


def test_the_page_invites_any_language_only_for_a_multilingual_model(searcher, shapes_artifacts):
    """The SigLIP 2-style model's Gemma tokenizer makes its build multilingual (recorded in the manifest); the English
    shapes CLIP's build is not, and its page makes no such promise."""
    from types import SimpleNamespace

    from clipsearch.core.gallery import Gallery
    from clipsearch.web.views import about_markdown

    assert searcher.encoder.info.multilingual and searcher.gallery.manifest.model["multilingual"] is True
    english = Gallery.open(shapes_artifacts).manifest
    assert english.model["multilingual"] is False
    for manifest, promised in ((searcher.gallery.manifest, True), (english, False)):
        service = SimpleNamespace(searcher=SimpleNamespace(gallery=SimpleNamespace(manifest=manifest), has_text=True),
                                  source=SimpleNamespace(repo_id=None, folder="here", notice=None))
        assert ("**Languages:** descriptions work in any language" in about_markdown(service)) is promised

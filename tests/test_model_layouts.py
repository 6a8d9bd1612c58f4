"""The model repos this project names, as they really are on the Hub, replayed on the loopback Hub with tiny weights.

What each layout copies (file names from the stored Hub listings; sizes of the real files in comments):
- laion/CLIP-ViT-B-32-laion2B-s34B-b79K (the default): transformers' model.safetensors (605 MB) beside OpenCLIP's
  open_clip_model.safetensors (605 MB), open_clip_config.json, and pickled copies of both (pytorch_model.bin,
  open_clip_pytorch_model.bin); CLIPTokenizer files vocab.json, merges.txt, tokenizer.json.
- openai/clip-vit-base-patch32: pytorch_model.bin, tf_model.h5 and flax_model.msgpack on main, no safetensors;
  model.safetensors only in SFconvertbot's pull requests "Adding `safetensors` variant of this model": refs/pr/32
  (converted an older main, since superseded) and refs/pr/66 (the one transformers' auto-conversion picks today).
- google/siglip-base-patch16-224: SiglipTokenizer with spiece.model and tokenizer.json, plus a pickled
  pytorch_model.bin.
- google/siglip2-base-patch16-224 (fixed resolution: model_type "siglip") and google/siglip2-base-patch16-naflex
  ("siglip2"): GemmaTokenizer declared in tokenizer_config.json, tokenizer.model + tokenizer.json.

Every pickled file here is a trap: unpickling it creates a marker file, so "never unpickled" is checked, not assumed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import pickle
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from testkit.helpers import Trap
from testkit.models import draw_shape, save_tiny_clip

LAION = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
OPENAI = "openai/clip-vit-base-patch32"
SIGLIP = "google/siglip-base-patch16-224"
SIGLIP2 = "google/siglip2-base-patch16-224"
SIGLIP2_NAFLEX = "google/siglip2-base-patch16-naflex"
CONVERSION_TITLE = "Adding `safetensors` variant of this model"
# What MODEL_FILES fetched before this change (snapshot_download allow_patterns), for the before/after figures.
OLD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
REPO_CHROME = {"README.md": b"---\nlicense: mit\n---\n# model card\n", ".gitattributes": b"*.bin filter=lfs\n"}
TEXTS = ["a red circle", "a photo of a blue square", "green cross on a plain background"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny checkpoints, saved once: {kind: folder}; 'other' is a CLIP with different weights."""
    root = tmp_path_factory.mktemp("layouts")
    kinds = {"clip": "clip", "siglip": "siglip", "siglip2-fixres": "siglip2-fixres", "siglip2": "siglip2"}
    folders = {name: save_tiny_clip(root / name, kind) for name, kind in kinds.items()}
    folders["other"] = save_tiny_clip(root / "other", "clip", seed=1)
    sharded = root / "sharded"
    shutil.copytree(folders["clip"], sharded)
    (sharded / "model.safetensors").unlink()
    from transformers import AutoModel

    AutoModel.from_pretrained(folders["clip"]).save_pretrained(sharded, max_shard_size="300KB")
    folders["sharded"] = sharded
    return folders


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "unpickled"


def _read(folder: Path, names) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def _trap(marker: Path) -> bytes:
    return pickle.dumps(Trap(marker))


def _fetched_names(hub, repo: str) -> set[str]:
    """Every file path of `repo` the client asked about (HEAD or GET), whatever the revision."""
    names = set()
    for record in hub.requests:
        parts = record.path.split("/resolve/", 1)
        if parts[0] == f"/{repo}" and len(parts) == 2:
            names.add(parts[1].split("/", 1)[1] if not parts[1].startswith("refs/") else parts[1].split("/", 3)[3])
    return names


def _old_pattern_bytes(files: dict[str, bytes]) -> int:
    return sum(len(data) for name, data in files.items() if any(fnmatch.fnmatch(name, p) for p in OLD_PATTERNS))


def _reference(folder: Path, texts, images, lowercase: bool):
    """The model's own vectors: its tokenizer (SigLIP: the reference recipe), image processor and get_*_features,
    L2-normalised."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    length = model.config.text_config.max_position_embeddings
    if lowercase:  # big_vision's SigLIP recipe: ASCII lowercased, no BOS, EOS, right-padded with the pad id, ids only
        ids = [tokenizer(text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase)),
                         add_special_tokens=False).input_ids[:length - 1] + [tokenizer.eos_token_id] for text in texts]
        tokens = {"input_ids": torch.tensor([row + [tokenizer.pad_token_id] * (length - len(row)) for row in ids])}
    else:
        tokens = tokenizer(texts, truncation=True, return_tensors="pt", padding=True, max_length=length)
    pixels = processor(images=images, return_tensors="pt")
    pixels = {k: pixels[k] for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes") if k in pixels}
    with torch.inference_mode():
        text = model.get_text_features(**tokens).pooler_output
        image = model.get_image_features(**pixels).pooler_output
    return (torch.nn.functional.normalize(text, dim=-1).numpy(), torch.nn.functional.normalize(image, dim=-1).numpy())


def _check_vectors(encoder, folder: Path, lowercase: bool = False) -> None:
    images = [draw_shape("red", "circle", seed=3), draw_shape("blue", "square", size=48, seed=4)]
    text, image = _reference(folder, TEXTS, images, lowercase)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), text, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_images(images), image, atol=1e-5)


def _load(repo: str, revision: str | None = None):
    from clipsearch.hub.encoders import load_encoder

    return load_encoder(repo, revision, device="cpu")


# ------------------------------------------------------------------------------------------------------ laion


def _laion_files(saved, marker) -> dict[str, bytes]:
    clip = saved["clip"]
    loaded = ["config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]
    return {
        **_read(clip, loaded),
        # As on the Hub, OpenCLIP's copy of the weights is as big as transformers' (here: another tiny model's).
        "open_clip_model.safetensors": (saved["other"] / "model.safetensors").read_bytes(),
        "open_clip_config.json": json.dumps({"model_cfg": {"embed_dim": 32}, "preprocess_cfg": {}}).encode(),
        "open_clip_pytorch_model.bin": _trap(marker),
        "pytorch_model.bin": _trap(marker),
        **REPO_CHROME,
    }, loaded


def test_laion_layout_fetches_only_what_transformers_loads(hub, saved, marker, capsys):
    files, loaded = _laion_files(saved, marker)
    hub.create_repo(LAION, "model")
    sha = hub.put_files(LAION, files, "model", "Initial commit")

    encoder = _load(LAION)

    assert hub.downloaded(LAION) == {name: len(files[name]) for name in loaded}  # each file once, whole
    assert _fetched_names(hub, LAION) == set(loaded)  # open_clip_*, *.bin never even asked about
    assert not marker.exists()
    assert encoder.info.model_id == LAION and encoder.info.revision == sha
    assert type(encoder.tokenizer).__name__ == "CLIPTokenizer"
    _check_vectors(encoder, saved["clip"])
    new, old = sum(hub.downloaded(LAION).values()), _old_pattern_bytes(files)
    with capsys.disabled():
        print(f"\nlaion layout: fetched {new} bytes ({len(loaded)} files); the old MODEL_FILES patterns: {old} bytes")
    assert new < old

    # The app loads the recorded revision: the same files from the cache, nothing downloaded again.
    from clipsearch.hub.models import resolve_model

    before = dict(hub.downloaded(LAION))
    folder, revision = resolve_model(LAION, encoder.info.revision)
    assert revision == sha and hub.downloaded(LAION) == before
    assert {p.name for p in folder.iterdir()} == set(loaded)
    assert all((folder / name).read_bytes() == files[name] for name in loaded)
    again = _load(LAION, encoder.info.revision)
    np.testing.assert_allclose(again.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-6)


def test_a_cached_model_loads_when_the_hub_is_offline(hub, saved, marker, monkeypatch):
    from huggingface_hub import constants

    from clipsearch.core.encoder import EncoderError

    files, loaded = _laion_files(saved, marker)
    sha = hub.put_files(LAION, files, "model", "Initial commit")
    first = _load(LAION)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    for revision in (None, sha):  # the branch (refs/main in the cache) and the recorded commit
        assert _load(LAION, revision).info.revision == sha
    assert len(hub.requests) == requests
    np.testing.assert_allclose(_load(LAION).encode_texts(TEXTS), first.encode_texts(TEXTS), atol=1e-6)
    with pytest.raises(EncoderError, match=r"^--model laion/never-seen: not in the local cache"):
        _load("laion/never-seen")


def test_sharded_safetensors_fetch_the_index_and_exactly_its_shards(hub, saved, marker):
    folder = saved["sharded"]
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2
    loaded = ["config.json", "model.safetensors.index.json", *shards, "preprocessor_config.json",
              "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]
    files = {**_read(folder, loaded), "pytorch_model.bin.index.json": b'{"weight_map": {}}',
             "pytorch_model-00001-of-00002.bin": _trap(marker), "pytorch_model-00002-of-00002.bin": _trap(marker),
             **REPO_CHROME}
    repo = "someone/sharded-clip"
    sha = hub.put_files(repo, files, "model")

    encoder = _load(repo)

    assert hub.downloaded(repo) == {name: len(files[name]) for name in loaded}
    assert encoder.info.revision == sha and not marker.exists()
    _check_vectors(encoder, saved["clip"])  # the same weights, split in shards


# ----------------------------------------------------------------------------------------------------- openai


def _openai_repo(hub, saved, marker) -> tuple[dict[str, bytes], str, list[str]]:
    """openai/clip-vit-base-patch32's history, in small: main without safetensors; a stale conversion PR (#32, of
    an older tokenizer_config.json), an impostor's PR with the bot's title, and the live conversion (#66)."""
    clip = saved["clip"]
    loaded = ["config.json", "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json",
              "tokenizer_config.json", "vocab.json", "merges.txt"]
    files = {**_read(clip, loaded), "pytorch_model.bin": _trap(marker), "tf_model.h5": b"\x89HDF\r\n" * 4000,
             "flax_model.msgpack": b"\x81\xa4junk" * 4000, **REPO_CHROME}
    old_tokenizer_config = json.dumps({**json.loads(files["tokenizer_config.json"]), "model_max_length": 77})
    hub.create_repo(OPENAI, "model")
    hub.put_files(OPENAI, {**files, "tokenizer_config.json": old_tokenizer_config.encode()}, "model", "add files")
    other_weights = (saved["other"] / "model.safetensors").read_bytes()
    hub.create_pull_request(OPENAI, {"model.safetensors": other_weights}, "model", title=CONVERSION_TITLE,
                            author="SFconvertbot", num=32)
    hub.put_files(OPENAI, {"tokenizer_config.json": files["tokenizer_config.json"]}, "model",
                  "Updates incorrect tokenizer configuration file (#13)")
    hub.create_pull_request(OPENAI, {"model.safetensors": other_weights}, "model", title=CONVERSION_TITLE,
                            author="mallory", num=50)
    converted = (clip / "model.safetensors").read_bytes()
    _, pr_sha = hub.create_pull_request(OPENAI, {"model.safetensors": converted}, "model", title=CONVERSION_TITLE,
                                        author="SFconvertbot", num=66)
    return {**files, "model.safetensors": converted}, pr_sha, ["model.safetensors", *loaded]


def test_openai_weights_come_from_the_conversion_pull_request(hub, saved, marker, caplog):
    from huggingface_hub import HfApi

    files, pr_sha, loaded = _openai_repo(hub, saved, marker)
    with caplog.at_level(logging.INFO, logger="clipsearch.hub.models"):
        encoder = _load(OPENAI)

    assert encoder.info.revision == pr_sha  # the commit the weights came from, not main's
    assert hub.downloaded(OPENAI) == {name: len(files[name]) for name in loaded}
    assert _fetched_names(hub, OPENAI) == set(loaded)  # no pytorch_model.bin, tf_model.h5, flax_model.msgpack
    assert not marker.exists()
    assert "refs/pr/66" in caplog.text and "conversion" in caplog.text
    _check_vectors(encoder, saved["clip"])  # the live conversion's weights, not the stale or impostor ones
    refs = HfApi(endpoint=hub.url).list_repo_refs(OPENAI, include_pull_requests=True)
    assert {(r.ref, r.target_commit) for r in refs.pull_requests} >= {("refs/pr/66", pr_sha)}

    # Loading by the recorded revision gives the same files and needs no pull request search.
    from clipsearch.hub.models import resolve_model

    discussions = sum("/discussions" in r.path for r in hub.requests)
    folder, revision = resolve_model(OPENAI, encoder.info.revision)
    assert revision == pr_sha and sum("/discussions" in r.path for r in hub.requests) == discussions
    assert {p.name for p in folder.iterdir()} == set(loaded)
    assert all((folder / name).read_bytes() == files[name] for name in loaded)
    again = _load(OPENAI, encoder.info.revision)
    np.testing.assert_allclose(again.encode_images([draw_shape("red", "cross")]),
                               encoder.encode_images([draw_shape("red", "cross")]), atol=1e-6)


def test_a_stale_or_foreign_conversion_is_never_used(hub, saved, marker):
    """Without the live conversion, neither the bot's PR of an older main (#32: other configs, other weights) nor a
    look-alike from another author (#50) may stand in for it: the model is refused."""
    from clipsearch.core.encoder import EncoderError

    _openai_repo(hub, saved, marker)
    hub.set_pull_request_status(OPENAI, 66, "closed", "model")
    with pytest.raises(EncoderError, match=r"^--model openai/clip-vit-base-patch32: .*no safetensors conversion"):
        _load(OPENAI)
    assert hub.downloaded(OPENAI) == {} and not marker.exists()


def test_pickled_weights_without_a_conversion_are_refused_in_a_sentence(hub, saved, marker):
    from clipsearch.core.encoder import EncoderError

    repo = "someone/pickled-only"
    names = ["config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
    hub.put_files(repo, {**_read(saved["clip"], names), "pytorch_model.bin": _trap(marker)}, "model")
    # A pull request with the bot's title from anyone else is not a conversion.
    hub.create_pull_request(repo, {"model.safetensors": (saved["other"] / "model.safetensors").read_bytes()},
                            "model", title=CONVERSION_TITLE, author="mallory")
    with pytest.raises(EncoderError) as refused:
        _load(repo)
    message = str(refused.value)
    assert message.startswith(f"--model {repo}:") and "refuses pickled weights" in message, message
    assert "pytorch_model.bin" in message and message.count(". ") == 0 and message.endswith(".")
    assert hub.downloaded(repo) == {} and not marker.exists()


def test_an_openclip_only_repo_is_refused_in_a_sentence(hub, marker):
    from clipsearch.core.encoder import EncoderError

    repo = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    hub.put_files(repo, {"open_clip_config.json": b"{}", "open_clip_pytorch_model.bin": _trap(marker),
                         "open_clip_model.safetensors": safetensors_bytes({"w": torch.zeros(4)}), **REPO_CHROME},
                  "model")
    with pytest.raises(EncoderError, match=r"^--model laion/CLIP-ViT-B-16-laion2B-s34B-b88K: .*no transformers "
                                           r"config\.json.*OpenCLIP"):
        _load(repo)
    assert hub.downloaded(repo) == {} and not marker.exists()


# ----------------------------------------------------------------------------------------------------- SigLIP

SIGLIP_LAYOUTS = {
    # repo: (saved kind, files transformers loads, other files of the real repo, tokenizer class loaded)
    SIGLIP: ("siglip", ["config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                        "spiece.model", "tokenizer.json", "tokenizer_config.json"], ["pytorch_model.bin"],
             "SiglipTokenizer"),
    SIGLIP2: ("siglip2-fixres", ["config.json", "model.safetensors", "preprocessor_config.json",
                                 "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                                 "tokenizer_config.json"], [], "GemmaTokenizer"),
    SIGLIP2_NAFLEX: ("siglip2", ["config.json", "model.safetensors", "preprocessor_config.json",
                                 "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                                 "tokenizer_config.json"], [], "Siglip2Tokenizer"),
}


@pytest.mark.parametrize("repo", list(SIGLIP_LAYOUTS))
def test_siglip_layouts_load_their_own_tokenizers_lowercase_and_pad(hub, saved, marker, repo):
    kind, loaded, pickled, tokenizer_class = SIGLIP_LAYOUTS[repo]
    folder = saved[kind]
    files = {**_read(folder, loaded), **{name: _trap(marker) for name in pickled}, **REPO_CHROME}
    sha = hub.put_files(repo, files, "model", "Upload processor")

    encoder = _load(repo)

    assert hub.downloaded(repo) == {name: len(files[name]) for name in loaded}
    assert encoder.info.revision == sha and not marker.exists()
    declared = json.loads(files["tokenizer_config.json"])["tokenizer_class"]
    assert declared == {"siglip": "SiglipTokenizer"}.get(kind, "GemmaTokenizer")  # as the real repos declare
    assert type(encoder.tokenizer).__name__ == tokenizer_class
    assert encoder.info.model_type == ("siglip2" if kind == "siglip2" else "siglip")
    # Fixed-length text, as trained: every query padded to the model's full context.
    length = json.loads(files["config.json"])["text_config"]["max_position_embeddings"]
    assert encoder.tokenize(["a", "a red circle"])["input_ids"].shape == (2, length)
    # Lowercased text, as in the reference evaluation, whatever the tokenizer class does by itself.
    np.testing.assert_allclose(encoder.encode_texts(["A RED Square"]), encoder.encode_texts(["a red square"]),
                               atol=1e-6)
    _check_vectors(encoder, folder, lowercase=True)


def test_the_gemma_tokenizer_alone_does_not_lowercase(saved):
    """Why the encoder lowercases: fixed-resolution SigLIP 2 repos get a GemmaTokenizer, which keeps case."""
    from transformers import AutoTokenizer

    gemma = AutoTokenizer.from_pretrained(saved["siglip2-fixres"])
    assert type(gemma).__name__ == "GemmaTokenizer"
    assert gemma("A RED Square").input_ids != gemma("a red square").input_ids
    siglip = AutoTokenizer.from_pretrained(saved["siglip"])
    assert siglip("A RED Square").input_ids == siglip("a red square").input_ids  # do_lower_case


@pytest.mark.parametrize("package", ["sentencepiece", "protobuf"])
def test_a_missing_tokenizer_package_is_a_sentence(saved, monkeypatch, package):
    """SiglipTokenizer needs sentencepiece and protobuf; without them transformers raises ImportError, which must
    reach the user as one sentence naming the package (simulated through transformers' own backend check)."""
    from transformers.utils import import_utils

    from clipsearch.core.encoder import Encoder, EncoderError

    _, message = import_utils.BACKENDS_MAPPING[package]
    monkeypatch.setitem(import_utils.BACKENDS_MAPPING, package, (lambda: False, message))
    folder = str(saved["siglip"])
    with pytest.raises(EncoderError) as refused:
        Encoder.load(folder, device="cpu")
    text = str(refused.value)
    assert text.startswith(f"--model {folder}: its tokenizer (SiglipTokenizer) needs the Python package {package},")
    assert f"pip install {package}" in text and "\n" not in text

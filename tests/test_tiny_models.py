"""Tiny offline checkpoints load through the Auto classes, and the trained shapes CLIP retrieves by colour and shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

from testkit.models import (
    COLORS,
    KINDS,
    MARKER_FILE,
    PROJECTION_DIM,
    SHAPES,
    caption_for,
    draw_shape,
    save_tiny_clip,
    shapes_gallery,
)

MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}
# Text every tokenizer must survive: far over the 16-token limit, emoji only, CJK only, empty.
AWKWARD_TEXTS = [
    "a red circle",
    " ".join(["a photo of a big red circle on a plain background"] * 20),  # 200 words
    "🙂🐈‍⬛🚀",
    "红色的圆形在白色背景上",
    "",
]


@pytest.fixture(scope="session", params=KINDS)
def tiny_checkpoint(request, tmp_path_factory):
    return request.param, save_tiny_clip(tmp_path_factory.mktemp("tiny") / request.param, kind=request.param)


def test_drawing_is_seeded_and_captions_are_plain():
    a = np.asarray(draw_shape("red", "circle", seed=3))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, np.asarray(draw_shape("red", "circle", seed=3)))
    assert not np.array_equal(a, np.asarray(draw_shape("red", "circle", seed=4)))
    assert draw_shape("blue", "cross", size=48).size == (48, 48)
    assert caption_for("red", "circle") == "a red circle"
    assert len({caption_for("red", "circle", seed) for seed in range(5)}) == 5


def test_tiny_family_loads_through_auto_classes(tiny_checkpoint):
    kind, path = tiny_checkpoint
    model = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == MODEL_CLASSES[kind]

    # SigLIP pools the last position, so it is always padded to the full length.
    padding = "max_length" if kind.startswith("siglip") else True
    text = tokenizer(AWKWARD_TEXTS, padding=padding, truncation=True, return_tensors="pt")
    assert text.input_ids.shape[1] <= model.config.text_config.max_position_embeddings
    images = [draw_shape("red", "circle"), draw_shape("blue", "square", size=50, seed=1), draw_shape("green", "cross")]
    pixels = image_processor(images, return_tensors="pt")
    with torch.no_grad():
        text_features = model.get_text_features(**text).pooler_output
        if kind == "siglip2":
            # NaFlex needs the patch mask and spatial shapes as well as the patches.
            image_features = model.get_image_features(**pixels).pooler_output
        else:
            image_features = model.get_image_features(pixel_values=pixels.pixel_values).pooler_output
        joint = model(**processor(text=["a red circle", "a blue square"], images=images[:2], return_tensors="pt",
                                  padding=padding, truncation=True))
    assert text_features.shape == (len(AWKWARD_TEXTS), PROJECTION_DIM)
    assert image_features.shape == (len(images), PROJECTION_DIM)
    assert torch.isfinite(text_features).all() and torch.isfinite(image_features).all()
    assert joint.logits_per_image.shape == (2, 2)


@pytest.fixture(scope="session")
def shapes_encoder(shapes_model):
    """The trained folder loaded the way production code loads a checkpoint."""
    model = AutoModel.from_pretrained(shapes_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(shapes_model)
    image_processor = AutoImageProcessor.from_pretrained(shapes_model)
    print("\nshapes CLIP training report:", json.loads((shapes_model / MARKER_FILE).read_text()))

    def encode(texts=(), images=()):
        with torch.no_grad():
            if texts:
                batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
                features = model.get_text_features(**batch).pooler_output
            else:
                pixel_values = image_processor(list(images), return_tensors="pt").pixel_values
                features = model.get_image_features(pixel_values=pixel_values).pooler_output
        return torch.nn.functional.normalize(features, dim=-1)

    return encode


@pytest.fixture(scope="session")
def gallery(shapes_encoder):
    """Every colour x shape twice, drawn with seeds the model never trained on."""
    items = shapes_gallery(per_combo=2, seed=7000)
    return [(c, s) for c, s, _ in items], shapes_encoder(images=[im for *_, im in items])


def test_text_query_ranks_its_shapes_first(shapes_encoder, gallery):
    labels, image_emb = gallery
    ranking = (shapes_encoder(texts=["a red circle"]) @ image_emb.T)[0].argsort(descending=True).tolist()
    assert [labels[i] for i in ranking[:2]] == [("red", "circle")] * 2, [labels[i] for i in ranking[:5]]

    combos = [(c, s) for c in COLORS for s in SHAPES]
    best = (shapes_encoder(texts=[caption_for(c, s) for c, s in combos]) @ image_emb.T).argmax(dim=1).tolist()
    wrong = [(combo, labels[j]) for combo, j in zip(combos, best) if labels[j] != combo]
    print(f"text->image top-1: {1 - len(wrong) / len(combos):.0%}, misses: {wrong}")
    assert len(wrong) <= 0.2 * len(combos), wrong


def test_image_query_ranks_its_shapes_first(shapes_encoder, gallery):
    labels, image_emb = gallery
    query = shapes_encoder(images=[draw_shape("blue", "square", seed=424_242)])
    ranking = (query @ image_emb.T)[0].argsort(descending=True).tolist()
    print("image->image top-3:", [labels[i] for i in ranking[:3]])
    assert labels[ranking[0]] == ("blue", "square")

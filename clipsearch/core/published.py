"""Published COCO retrieval figures (Karpathy 5k test split) of the models we document; how a build compares."""

from __future__ import annotations

from dataclasses import dataclass

KS = ("R@1", "R@5", "R@10")
TOLERANCE = 1.5  # points of text->image recall a build may fall below the published figure before it is flagged

# The two tables, pinned to the commits they were read from. Numbers are copied from the files, never recomputed.
OPENCLIP_SOURCE = "open_clip retrieval results (LAION CLIP_benchmark)"
OPENCLIP_URL = ("https://github.com/mlfoundations/open_clip/blob/29b90b8dde9125c479c0ddbab477310f665a0435/"
                "docs/openclip_retrieval_results.csv")
SIGLIP2_SOURCE = "big_vision SigLIP 2 README"
SIGLIP2_URL = ("https://github.com/google-research/big_vision/blob/332565368df27457f47ace494a99dcd3748d5207/"
               "big_vision/configs/proj/image_text/README_siglip2.md")


@dataclass(frozen=True)
class PublishedRecall:
    """One model's published COCO 5k recall in percent; None where the source gives no figure."""

    model_id: str  # the Hub id a build's manifest names
    reference: str  # the name the source gives the model
    source: str
    source_url: str
    t2i_r1: float | None = None
    t2i_r5: float | None = None
    t2i_r10: float | None = None
    i2t_r1: float | None = None
    i2t_r5: float | None = None
    i2t_r10: float | None = None

    @property
    def text_to_image(self) -> dict[str, float]:
        return _known(self.t2i_r1, self.t2i_r5, self.t2i_r10)

    @property
    def image_to_text(self) -> dict[str, float]:
        return _known(self.i2t_r1, self.i2t_r5, self.i2t_r10)


def _known(r1, r5, r10) -> dict[str, float]:
    return {k: v for k, v in zip(KS, (r1, r5, r10)) if v is not None}


def _openclip(model_id: str, name: str, pretrained: str, *fractions: float) -> PublishedRecall:
    """A row of openclip_retrieval_results.csv: its MSCOCO columns as written there, in [0, 1] fractions:
    "image retr." R@1/5/10 (text -> image) then "text retr." R@1/5/10 (image -> text)."""
    percent = [round(f * 100, 2) for f in fractions]
    return PublishedRecall(model_id, f"{name} {pretrained}", OPENCLIP_SOURCE, OPENCLIP_URL, *percent[:3],
                           i2t_r1=percent[3], i2t_r5=percent[4], i2t_r10=percent[5])


def _siglip2(model_id: str, row: str, t2i_r1: float, i2t_r1: float) -> PublishedRecall:
    """A row of README_siglip2.md: its "COCO T→I" and "COCO I→T" columns, R@1 only, already in percent."""
    return PublishedRecall(model_id, f"SigLIP 2 {row}", SIGLIP2_SOURCE, SIGLIP2_URL, t2i_r1=t2i_r1, i2t_r1=i2t_r1)


# Hub ids are matched to the tables' rows by the checkpoint they hold: open_clip's own pretrained.py points
# "ViT-B-32 laion2b_s34b_b79k" and the other laion rows at these laion repos; the openai rows are OpenAI's released
# weights, which the openai/clip-* repos carry; the ViT-*-SigLIP webli rows are big_vision's SigLIP checkpoints,
# which the google/siglip-* repos carry; the google/siglip2-* ids are the ones README_siglip2.md linked to its rows
# (commit 1659d4297dc6 "add hf checkpoints").
TABLE: tuple[PublishedRecall, ...] = (
    _openclip("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32", "laion2b_s34b_b79k",
              0.3934, 0.6543, 0.7561, 0.5632, 0.7984, 0.8712),
    _openclip("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "ViT-B-16", "laion2b_s34b_b88k",
              0.4231, 0.6770, 0.7706, 0.5944, 0.8178, 0.8862),
    _openclip("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "ViT-L-14", "laion2b_s32b_b82k",
              0.4651, 0.7108, 0.7980, 0.6336, 0.8398, 0.9074),
    _openclip("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "ViT-H-14", "laion2b_s32b_b79k",
              0.4948, 0.7338, 0.8151, 0.6592, 0.8606, 0.9188),
    _openclip("laion/CLIP-ViT-g-14-laion2B-s34B-b88K", "ViT-g-14", "laion2b_s34b_b88k",
              0.4878, 0.7334, 0.8151, 0.6638, 0.8598, 0.9184),
    _openclip("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "ViT-bigG-14", "laion2b_s39b_b160k",
              0.5137, 0.7490, 0.8300, 0.6738, 0.8686, 0.9266),
    _openclip("openai/clip-vit-base-patch32", "ViT-B-32", "openai",
              0.3044, 0.5594, 0.6687, 0.5012, 0.7500, 0.8352),
    _openclip("openai/clip-vit-base-patch16", "ViT-B-16", "openai",
              0.3309, 0.5842, 0.6899, 0.5242, 0.7670, 0.8462),
    _openclip("openai/clip-vit-large-patch14", "ViT-L-14", "openai",
              0.3651, 0.6106, 0.7113, 0.5634, 0.7938, 0.8660),
    _openclip("openai/clip-vit-large-patch14-336", "ViT-L-14-336", "openai",
              0.3709, 0.6162, 0.7147, 0.5794, 0.8120, 0.8792),
    _openclip("google/siglip-base-patch16-224", "ViT-B-16-SigLIP", "webli",
              0.4778, 0.7244, 0.8100, 0.6574, 0.8542, 0.9126),
    _openclip("google/siglip-base-patch16-256", "ViT-B-16-SigLIP-256", "webli",
              0.4834, 0.7254, 0.8099, 0.6614, 0.8634, 0.9182),
    _openclip("google/siglip-base-patch16-384", "ViT-B-16-SigLIP-384", "webli",
              0.4990, 0.7366, 0.8204, 0.6774, 0.8758, 0.9258),
    _openclip("google/siglip-base-patch16-512", "ViT-B-16-SigLIP-512", "webli",
              0.5055, 0.7421, 0.8217, 0.6872, 0.8786, 0.9266),
    _openclip("google/siglip-base-patch16-256-multilingual", "ViT-B-16-SigLIP-i18n-256", "webli",
              0.4492, 0.6948, 0.7837, 0.6448, 0.8434, 0.9060),
    _openclip("google/siglip-large-patch16-256", "ViT-L-16-SigLIP-256", "webli",
              0.5228, 0.7580, 0.8334, 0.7080, 0.8870, 0.9374),
    _openclip("google/siglip-large-patch16-384", "ViT-L-16-SigLIP-384", "webli",
              0.5391, 0.7657, 0.8399, 0.7190, 0.9006, 0.9410),
    _openclip("google/siglip-so400m-patch14-224", "ViT-SO400M-14-SigLIP", "webli",
              0.5176, 0.7527, 0.8300, 0.6966, 0.8908, 0.9348),
    _openclip("google/siglip-so400m-patch14-384", "ViT-SO400M-14-SigLIP-384", "webli",
              0.5421, 0.7678, 0.8424, 0.7242, 0.8998, 0.9448),
    _siglip2("google/siglip2-base-patch32-256", "B/32 256", 47.2, 63.7),
    _siglip2("google/siglip2-base-patch16-224", "B/16 224", 52.1, 68.9),
    _siglip2("google/siglip2-base-patch16-256", "B/16 256", 53.2, 69.7),
    _siglip2("google/siglip2-base-patch16-384", "B/16 384", 54.6, 71.4),
    _siglip2("google/siglip2-base-patch16-512", "B/16 512", 55.2, 71.2),
    _siglip2("google/siglip2-large-patch16-256", "L/16 256", 54.7, 71.5),
    _siglip2("google/siglip2-large-patch16-384", "L/16 384", 55.3, 71.4),
    _siglip2("google/siglip2-large-patch16-512", "L/16 512", 55.2, 72.1),
    _siglip2("google/siglip2-so400m-patch14-224", "So400m/14 224", 55.1, 71.5),
    _siglip2("google/siglip2-so400m-patch14-384", "So400m/14 384", 55.8, 71.7),
    _siglip2("google/siglip2-so400m-patch16-256", "So400m/16 256", 55.4, 71.5),
    _siglip2("google/siglip2-so400m-patch16-384", "So400m/16 384", 56.0, 71.2),
    _siglip2("google/siglip2-so400m-patch16-512", "So400m/16 512", 56.0, 71.3),
    _siglip2("google/siglip2-giant-opt-patch16-256", "g-opt/16 256", 55.7, 72.5),
    _siglip2("google/siglip2-giant-opt-patch16-384", "g-opt/16 384", 56.1, 72.8),
    _siglip2("google/siglip2-base-patch16-naflex", "B/16 NaFlex (sequence length 256)", 51.1, 67.3),
    _siglip2("google/siglip2-so400m-patch16-naflex", "So400m/16 NaFlex (sequence length 256)", 55.1, 71.2),
)
_BY_ID = {entry.model_id.lower(): entry for entry in TABLE}


def published_for(model_id: str | None) -> PublishedRecall | None:
    """The published figures for a Hub model id (case-insensitive), or None; local folders never match."""
    return _BY_ID.get((model_id or "").strip().lower())


def compare(result: dict, entry: PublishedRecall) -> dict:
    """Set a recall result (text_to_image / image_to_text dicts in percent, as evaluate() writes them) beside the
    published figures. Text->image R@5 decides (R@1 where only R@1 is published, as for SigLIP 2): more than
    TOLERANCE points below is flagged, since it means preprocessing or tokenisation differs from the reference."""
    published_t2i = entry.text_to_image
    metric = "R@5" if "R@5" in published_t2i else "R@1"
    ours, theirs = float(result["text_to_image"][metric]), published_t2i[metric]
    difference = round(ours - theirs, 2)
    flagged = difference < -TOLERANCE
    where = f"{entry.source}, {entry.reference}"
    if flagged:
        note = (f"text → image {metric} {ours:.1f} is {-difference:.1f} points below the published {theirs:.1f} "
                f"({where}): preprocessing or tokenisation differs from the reference evaluation.")
    elif difference < 0:
        note = (f"text → image {metric} {ours:.1f} is within {TOLERANCE:g} points of the published {theirs:.1f} "
                f"({where}).")
    else:
        note = f"text → image {metric} {ours:.1f} matches or beats the published {theirs:.1f} ({where})."
    if metric == "R@1":
        note += f" Only R@1 is published for this model, so R@1 is compared, with the same {TOLERANCE:g}-point rule."
    total, images = result.get("split_images"), result.get("images")
    if total and images and images < total:
        note += (f" Measured on {images:,} of the {total:,} test images: fewer distractors raise recall, so the "
                 "comparison is lenient.")
    return {
        "model_id": entry.model_id, "reference": entry.reference, "source": entry.source,
        "source_url": entry.source_url, "text_to_image": published_t2i, "image_to_text": entry.image_to_text,
        "compared": f"text_to_image {metric}", "ours": ours, "published": theirs, "difference": difference,
        "tolerance": TOLERANCE, "flagged": flagged, "note": note,
    }


KARPATHY = "karpathy-5k-test"  # the evaluation key builder.karpathy writes


def recall_results(evaluation: dict) -> list[tuple[str, dict]]:
    """The caption-recall results of a manifest's evaluation (old manifests included), the published split first."""
    items = [(name, result) for name, result in evaluation.items()
             if isinstance(result, dict) and "text_to_image" in result and "image_to_text" in result]
    return sorted(items, key=lambda item: item[0] != KARPATHY)


def recall_label(name: str, result: dict) -> str:
    """What a recall result was measured on; manifests written before results carried a label get one here."""
    if result.get("label"):
        return result["label"]
    counts = ", ".join(f"{result[key]:,} {key}" for key in ("images", "captions") if key in result)
    if name == "val2017":
        return f"val2017 ({counts}; no paper reports this split)"
    return f"{name} ({counts})" if counts else name


def skipped_karpathy(evaluation: dict) -> str | None:
    """Why the Karpathy split was not evaluated, when the build tried and skipped it."""
    result = evaluation.get(KARPATHY)
    return result.get("skipped") if isinstance(result, dict) else None


def format_recall(recall: dict) -> str:
    return " ".join(f"{k} {recall[k]:.1f}" for k in KS if k in recall)

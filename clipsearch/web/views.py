"""Hits and the build's manifest formatted for the UI's components: plain values, no Gradio event logic."""

from __future__ import annotations

import html

from ..core.calibration import WEAK
from ..core.published import KARPATHY, recall_label, recall_results, skipped_karpathy
from ..core.query import Plan
from ..core.search import Hit
from ..serve.service import Service

TITLE = "COCO CLIP visual search"


def gallery_items(hits: list[Hit]) -> list[tuple[str, str]]:
    """(thumbnail, label) per hit: an object hit is labelled with its category (its thumbnail shows its box)."""
    return [(hit.thumbnail, f"{_strength(hit)} · {getattr(hit, 'category', '') or hit.caption}") for hit in hits]


def _strength(hit: Hit) -> str:
    """How sure the match is, in words a visitor reads: the calibrated chance where the build has one, else the
    cosine (which means nothing across models, so it is labelled as a similarity, not a promise)."""
    if hit.confidence is None:
        return f"similarity {hit.score:.3f}"
    return f"{'weak · ' if hit.confidence < WEAK else ''}{_percent(hit.confidence)} match"


def _percent(probability: float) -> str:
    """A chance as a visitor reads it: "<1%" rather than a "0%" that claims a certainty nobody has."""
    return "<1%" if probability < 0.005 else f"{probability:.0%}"


def results_label(hits: list[Hit], plan: Plan) -> str:
    """The results' heading; when even the best hit of a search is unlikely to be a match, it says so plainly."""
    if not hits:
        return "No more results" if plan.page else "No results"
    first = plan.first_rank
    span = f"Results {first}–{first + len(hits) - 1}"
    if plan.page == 0 and hits[0].confidence is not None and hits[0].confidence < WEAK:
        return (f"Nothing in this collection matches well (best: {_percent(hits[0].confidence)} likely). {span} are "
                "the nearest images, marked weak.")
    return span


def hits_data(hits: list[Hit]) -> list[dict]:
    """The API's view of a hit: everything but the server-side thumbnail path; `confidence` only where the build
    could calibrate it."""
    return [{key: value for key, value in hit.to_dict().items()
             if key not in ("thumbnail", "row", "object_row") and not (key == "confidence" and value is None)}
            for hit in hits]


def feedback_choices(hits: list[dict]) -> list[tuple[str, int]]:
    return [(f"#{hit['rank']} {hit['caption'][:48]}", hit["image_id"]) for hit in hits]


def details_markdown(hit: dict) -> str:
    captions = "\n".join(f"- {html.escape(c)}" for c in hit["captions"]) or "- (no captions)"
    categories = ", ".join(html.escape(c) for c in hit["categories"]) or "none listed"
    link = f" · [Open the original image]({hit['url']})" if hit.get("url") else ""
    split = f" · {html.escape(hit['split'])}" if hit.get("split") not in (None, "", ".") else ""
    thing = (f"**{html.escape(hit['category'])}** at [{', '.join(f'{v:g}' for v in hit['box'])}] (the box on "
             "the thumbnail) · " if hit.get("box") else "")
    return (
        f"## Image {hit['image_id']}{split}\n{thing}"
        f"{_confidence_line(hit)}{_similarity(hit)}{hit['width']}×{hit['height']} px{link}\n\n"
        f"**Captions**\n{captions}\n\n**COCO categories:** {categories}"
    )


def _similarity(hit: dict) -> str:
    """The score, for a hit of a search; an image opened from the map has none."""
    return "" if hit.get("score") is None else f"Similarity **{hit['score']:.3f}** · "


def _confidence_line(hit: dict) -> str:
    if hit.get("confidence") is None:
        return ""
    weak = " (a weak match)" if hit["confidence"] < WEAK else ""
    return f"**{_percent(hit['confidence'])}** likely a match{weak} · "


def _recall_table(name: str, result: dict) -> str:
    """One recall result as a table; on the Karpathy split, the model's published figures beside ours, and the
    verdict of the comparison."""

    def cells(recall: dict) -> str:
        return " | ".join(f"{recall[k]:.1f}" if k in recall else "—" for k in ("R@1", "R@5", "R@10"))

    published = result.get("published")
    rows = [f"| text → image, this build | {cells(result['text_to_image'])} |"]
    if published:
        rows.append(f"| text → image, published | {cells(published['text_to_image'])} |")
    rows.append(f"| image → text, this build | {cells(result['image_to_text'])} |")
    if published:
        rows.append(f"| image → text, published | {cells(published['image_to_text'])} |")
    text = (f"\n**Recall on {recall_label(name, result)}**\n\n| direction | R@1 | R@5 | R@10 |\n|---|---|---|---|\n"
            + "\n".join(rows))
    if name == KARPATHY:
        text += "\n\nThe Karpathy 5k test split is the one the CLIP, open_clip and SigLIP papers report."
    if published:
        text += (f"\n\nPublished: [{published['source']}]({published['source_url']}), {published['reference']}."
                 f"\n\n{'⚠️ ' if published['flagged'] else ''}{published['note']}")
    return text


def _calibration_paragraph(manifest) -> str:
    calibration = manifest.calibration
    if calibration is None:
        return ("\n**Confidence:** this collection has no captions to calibrate on, so results show similarity "
                "scores only; a score says which image is closer, not whether it matches.")
    fitted, held = calibration.fitted_on, calibration.held_out
    ece = f" Held-out expected calibration error: {held['ece']:.3f} over {held['pairs']:,} pairs." if "ece" in held \
        else ""
    return (f"\n**Confidence:** each result of a description carries the chance that a person would call it a "
            f"match, fitted for this model and collection on {fitted.get('captions', 0):,} of its own captions "
            f"(their top {fitted.get('depth', 0)} hits; a match is the caption's own image or one whose captions "
            f"say the same).{ece} Below {WEAK:.0%} for the best result, the page says that nothing matches well. "
            f"{_picture_sentence(manifest.picture_calibration)}")


def _picture_sentence(calibration) -> str:
    if calibration is None:
        return "Picture searches show similarity only: this build has no calibration for them."
    fitted, held = calibration.fitted_on, calibration.held_out
    ece = f" (held-out error {held['ece']:.3f} over {held['pairs']:,} pairs)" if "ece" in held else ""
    return (f"A search by one picture carries the same chance, fitted on {fitted.get('pictures', 0):,} of the "
            f"collection's pictures searching the others: a hit is a match when any of the query picture's own "
            f"captions would call it one{ece}.")


def about_markdown(service: Service) -> str:
    manifest, source = service.searcher.gallery.manifest, service.source
    model = manifest.model
    if service.searcher.has_text:
        intro = (f"{TITLE} finds images from the COCO 2017 gallery that match a description or look like a picture "
                 "you give it. Both are embedded with a CLIP model into the same vector space; the closest gallery "
                 "images are found with FAISS. Everything runs on this Space's CPU.")
    else:
        intro = (f"{TITLE} finds the gallery images that look most like a picture you give it. This index was built "
                 f"with an image-only model ({model['architecture']}), chosen for visual similarity: it has no text "
                 "side, so search by description is off. The closest gallery images are found with FAISS.")
    lines = [
        f"## About\n{intro}",
        "### This build",
        f"- **Model:** `{model['model_id']}`" + (f" @ `{model['revision'][:12]}`" if model.get("revision") else ""),
        f"- **Images:** {manifest.count:,} (dimension {manifest.dim}, index {manifest.index.factory})",
        f"- **Built:** {manifest.created_at} by builder `{manifest.builder_version}`",
    ]
    if source.repo_id:
        lines.append(f"- **Artifacts:** `{source.repo_id}` at `{source.ref}` (commit `{(source.revision or '')[:12]}`)")
    else:
        lines.append(f"- **Artifacts:** local folder `{source.folder}`")
    if source.notice:
        lines.append(f"- ⚠️ {source.notice}")
    for name, result in recall_results(manifest.evaluation):
        lines.append(_recall_table(name, result))
    if reason := skipped_karpathy(manifest.evaluation):
        lines.append(f"\n**Recall on the Karpathy 5k test split** (the split published COCO figures use): not "
                     f"measured for this build ({reason}).")
    lines.append(_calibration_paragraph(manifest))
    if model.get("multilingual"):  # recorded by the builder from the model's tokenizer
        lines.append("\n**Languages:** descriptions work in any language the model was trained on; text reaches it "
                     "as typed (lowercased in ASCII only, as in its reference evaluation). Its published multilingual "
                     "retrieval (Crossmodal-3600, 36 languages) is in the SigLIP 2 paper, "
                     "[arXiv:2502.14786](https://arxiv.org/abs/2502.14786) (not quoted here: no copy of its tables "
                     "could be checked); COCO recall above is English.")
    if by_category := manifest.evaluation.get("image_to_image_by_category"):
        lines.append(f"\n**Image → image, relevance = shares a COCO category** ({by_category['images']:,} images)\n\n"
                     "| P@1 | P@5 | P@10 | mAP |\n|---|---|---|---|\n"
                     f"| {by_category['P@1']:.1f} | {by_category['P@5']:.1f} | {by_category['P@10']:.1f} | "
                     f"{by_category['mAP']:.1f} |")
    lines.append(
        "\n### Use it from Python\n```python\nfrom gradio_client import Client, handle_file\n"
        "client = Client(\"<this Space's id or URL>\")\n"
        "gallery, hits = client.predict(\"a dog on a beach\", 5, api_name=\"/search_text\")\n"
        "gallery, hits = client.predict(handle_file(\"photo.jpg\"), 5, api_name=\"/search_image\")\n"
        "gallery, hits = client.predict(hits[0][\"image_id\"], 5, api_name=\"/search_similar\")\n"
        "print(hits[0][\"image_id\"], hits[0][\"score\"], hits[0][\"caption\"])\n```"
    )
    return "\n".join(lines)

"""Query latency at COCO size over the raw Gradio HTTP API, against a naive in-process fp32 baseline, same run.

    python benchmarks/query_latency.py [--count 123287] [--queries 60] [--index auto]

Builds (once, cached) a 123,287-row artifact folder from clustered synthetic vectors with the ViT-B/32-size random
CLIP (same compute as the default model), starts `python app.py` on it and times POST /gradio_api/call/<endpoint>
plus reading the result stream (upload included for images). The baseline runs in this process on the same
inputs: transformers fp32 encode + a FAISS IndexFlatIP search over the same vectors. App and baseline queries
alternate, so a busy machine slows both alike and the ratio stays meaningful. A third column times the app's own
search core (clipsearch.core.search.Searcher) in this process, to show how much of the round trip is HTTP and Gradio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import (
    App,
    call,
    coco_like_jpegs,
    machine,
    percentile,
    synthetic_artifacts,
    text_queries,
    upload,
)

TARGETS = {"search_text": 15.0, "search_image": 60.0}  # p50 ms over raw HTTP at 123k images (the issue)


class Naive:
    """What a straightforward script does: transformers fp32, one query at a time, exact search."""

    def __init__(self, model_dir: Path, vectors: np.ndarray):
        import faiss
        import torch
        from transformers import AutoModel, AutoProcessor

        self.torch = torch
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.vectors = vectors
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors))

    def _search(self, features) -> list[int]:
        query = self.torch.nn.functional.normalize(features, dim=-1).numpy()
        return self.index.search(query, 5)[1][0].tolist()

    def text(self, text: str) -> list[int]:
        with self.torch.inference_mode():
            tokens = self.processor(text=[text], return_tensors="pt", padding=True)
            return self._search(self.model.get_text_features(**tokens).pooler_output)

    def image(self, path: Path) -> list[int]:
        from PIL import Image

        with self.torch.inference_mode():
            pixels = self.processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
            return self._search(self.model.get_image_features(pixel_values=pixels).pooler_output)

    def similar(self, row: int) -> list[int]:
        return self.index.search(np.asarray(self.vectors[row : row + 1], dtype=np.float32), 5)[1][0].tolist()


def in_process_searcher(folder: Path, cache: Path):
    """The app's own search core in this process (no HTTP, no Gradio): shows where the round trip's time goes."""
    from clipsearch.core.batcher import ModelThread
    from clipsearch.core.encoder import Encoder
    from clipsearch.core.gallery import Gallery
    from clipsearch.core.search import Searcher

    gallery = Gallery.open(folder, verify=False, thumb_cache=cache / "in-process-thumbs")
    model = gallery.manifest.model
    thread = ModelThread()  # as clipsearch.serve.service.start does: the model loaded and run on one thread
    encoder = thread.run(Encoder.load, model["model_id"], model.get("revision"), "cpu", precision="auto")
    return Searcher(gallery, encoder, thread)


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=123_287, help="gallery rows (default COCO's 123,287)")
    parser.add_argument("--queries", type=int, default=60, help="timed queries per endpoint")
    parser.add_argument("--index", default="auto", help="FAISS factory for the artifacts (default: builder's auto)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    header = machine()
    folder = synthetic_artifacts(args.cache, args.count, args.index)
    from clipsearch.core.manifest import Manifest

    manifest = Manifest.read(folder)
    jpegs = sorted(coco_like_jpegs(args.cache / "jpegs", 8).glob("*.jpg"))[:8]
    vectors = np.load(folder / "embeddings.npy", mmap_mode="r")
    naive = Naive(Path(manifest.model["model_id"]), np.asarray(vectors))
    searcher = in_process_searcher(folder, args.cache)
    # The baseline computes on the searcher's model thread too: one OpenMP team in this process, as in the app
    # (two teams on 2 cores would slow both columns; see clipsearch.core.batcher.ModelThread).
    on_model_thread = searcher.model_thread.run
    image_ids = [9 + 3 * row for row in range(0, args.count, max(1, args.count // 997))]
    texts = text_queries(2 * args.queries + 5, seed=1)  # distinct: none is answered from the app's text cache
    results: dict[str, tuple[list[float], list[float]]] = {}
    with App(folder, args.cache) as app, httpx.Client(base_url=app.url, timeout=120) as client:
        precision = app.log_line(r"precision \w+(-\w+)?")
        endpoints = {
            "search_text": (lambda i: call(client, "search_text", [texts[i], 5]),
                            lambda i: on_model_thread(naive.text, texts[i]),
                            lambda i: searcher.search_text(texts[i], 5)),
            "search_image": (lambda i: call(client, "search_image", [upload(client, jpegs[i % 8]), 5]),
                             lambda i: on_model_thread(naive.image, jpegs[i % 8]),
                             lambda i: searcher.search_image(jpegs[i % 8], 5)),
            "search_similar": (lambda i: call(client, "search_similar", [image_ids[i % len(image_ids)], 5]),
                               lambda i: naive.similar((image_ids[i % len(image_ids)] - 9) // 3),
                               lambda i: searcher.search_similar(image_ids[i % len(image_ids)], 5)),
        }
        for name, (ours, theirs, core) in endpoints.items():
            for i in range(3):  # warm-up (first-use costs: thumbnails written, lazy imports, allocator)
                ours(args.queries + i)
                theirs(args.queries + i)
                core(args.queries + i)
            app_ms, naive_ms, core_ms = [], [], []
            for i in range(args.queries):
                app_ms.append(timed(ours, i))
                naive_ms.append(timed(theirs, i))
                core_ms.append(timed(core, i))
            results[name] = app_ms, naive_ms, core_ms
        # The app once more with nothing running in this process between its queries (the interleaved runs above
        # share the 2 cores with the baseline, which is fair to the ratio but not what a lone visitor sees).
        alone = {name: [timed(ours, args.queries + 5 + i) for i in range(args.queries)]
                 for name, (ours, _, _) in endpoints.items()}
        repeat = [timed(call, client, "search_text", [texts[0], 5]) for _ in range(args.queries)]
        rss = app.rss_mb()
    print(f"\nQuery latency, app over raw HTTP vs naive in-process fp32, {manifest.count:,} images, ViT-B/32 size,"
          f" CPU ({header})\n")
    print(f"app: index {manifest.index.factory} {manifest.index.search_params} ({manifest.index.faiss_type}, "
          f"recall@5 vs exact {manifest.index.recall_at_5:.4f}), encoder {precision or '?'}; "
          f"naive: transformers fp32 + IndexFlatIP; resident memory of the app after the run {rss:.0f} MB"
          + "\n")
    print("| endpoint | app p50 ms | app p90 ms | naive p50 ms | naive p90 ms | app/naive (p50) | target p50 "
          "| search core in-process p50 ms | app alone p50 ms | n |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for name, (app_ms, naive_ms, core_ms) in results.items():
        p50, naive50 = statistics.median(app_ms), statistics.median(naive_ms)
        target = TARGETS.get(name)
        verdict = f"≤ {target:.0f} ms: {'met' if p50 <= target else 'NOT met'}" if target else "-"
        print(f"| /{name} | {p50:.1f} | {percentile(app_ms, 0.9):.1f} | {naive50:.1f} | "
              f"{percentile(naive_ms, 0.9):.1f} | {p50 / naive50:.2f}× | {verdict} | {statistics.median(core_ms):.1f} "
              f"| {statistics.median(alone[name]):.1f} | {len(app_ms)} |")
    print(f"| /search_text, repeated query (cached vector) | {statistics.median(repeat):.1f} | "
          f"{percentile(repeat, 0.9):.1f} | | | | | | | {len(repeat)} |")
    print("\n(search core in-process: clipsearch.core.search.Searcher with the app's encoder and gallery in this "
          "process, no HTTP or Gradio; images passed as file paths, decoding included. app alone: the app's p50 "
          "measured again after the interleaved runs, with this process idle between queries)")


if __name__ == "__main__":
    main()

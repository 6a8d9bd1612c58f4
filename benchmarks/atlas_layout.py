"""How well, and how fast, each 2-D layout keeps an image's neighbours together: PCA (the old map), openTSNE and UMAP
on COCO-size clustered synthetic vectors (benchmarks.artifacts.clustered_vectors, 768-D like SigLIP 2 B/16).

Neighbour preservation: for a seeded sample of images, the share of its 10 nearest neighbours on the map that are
among its 10 (and 50) nearest neighbours in the full vectors (exact, by cosine). Writes results/atlas_layout.md.

    python -m benchmarks.atlas_layout                     # 123,287 x 768, all three methods
    python -m benchmarks.atlas_layout --count 20000 --methods pca,tsne
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from benchmarks.artifacts import COCO_COUNT, clustered_vectors
from benchmarks.common import Report, arguments
from builder.atlas import PCA_DIMS, SEED, layout, principal_components
from clipsearch.core.atlas import normalise

SAMPLE = 2000


def umap_layout(vectors: np.ndarray) -> np.ndarray:
    import umap  # lazy: a benchmark-only comparison, not a dependency of the builder

    reduced = principal_components(vectors, PCA_DIMS)
    return normalise(umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=SEED).fit_transform(reduced))


METHODS = {
    "pca": lambda v: normalise(principal_components(v, 2)),
    "tsne": layout,
    "umap": umap_layout,
}
LABELS = {"pca": "PCA (today's map)", "tsne": "openTSNE 1.0.4 (FFT, PCA init, perplexity 30, PCA-50 first)",
          "umap": "UMAP 0.5.12 (15 neighbours, min_dist 0.1, seeded, PCA-50 first)"}


def neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, metric=faiss.IndexFlatIP) -> np.ndarray:
    index = metric(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    return found[:, 1:]  # the query itself comes first


def preservation(xy: np.ndarray, truth10: np.ndarray, truth50: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    on_map = neighbours(xy, xy[sample], 10, faiss.IndexFlatL2)
    in10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(on_map, truth10)])
    in50 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(on_map, truth50)])
    return float(in10), float(in50)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--count", type=int, default=COCO_COUNT)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--methods", default="pca,tsne",
                        help="of pca, tsne, umap (umap needs `pip install umap-learn==0.5.12`)")
    args = parser.parse_args()
    report = Report.start("atlas_layout", "Atlas layout: neighbour preservation and build time")
    vectors = clustered_vectors(args.count, args.dim)
    sample = np.random.default_rng(1).choice(len(vectors), SAMPLE, replace=False)
    truth = neighbours(vectors, vectors[sample], 50)
    rows = []
    for method in args.methods.split(","):
        started = time.perf_counter()
        xy = METHODS[method](vectors)
        seconds = time.perf_counter() - started
        in10, in50 = preservation(xy, truth[:, :10], truth, sample)
        rows.append(f"| {LABELS[method]} | {seconds:,.1f} | {in10:.3f} | {in50:.3f} |")
        print(rows[-1], flush=True)
        report.write(_body(args, rows), args.results, final=False)
    report.write(_body(args, rows), args.results)


def _body(args, rows: list[str]) -> str:
    return (f"{args.count:,} clustered synthetic vectors of dimension {args.dim} (benchmarks.artifacts."
            f"clustered_vectors: topics of 120, 8 sub-topics each); {SAMPLE:,} sampled images.\n\n"
            "| layout | seconds | 10-NN on the map within the 10-NN in full dims | ... within the 50-NN |\n"
            "|---|---|---|---|\n"
            + "\n".join(rows))


if __name__ == "__main__":
    main()

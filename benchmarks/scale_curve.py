"""How far does it scale? The index from 10k to 10M vectors: build time, memory, one query's p50, recall@5 vs exact.

    python -m benchmarks.scale_curve                                  # 10k, 123,287 (COCO) and 1M vectors
    python -m benchmarks.scale_curve --sizes 10000,123287             # a quick look
    python -m benchmarks.scale_curve --sizes 10000000 --merge         # 10M (compressed indexes only), beside the rest

Writes benchmarks/results/scale_curve.json (the rows and runs, as data), scale_curve.md (the table) and
scale_curve.png (p50 and recall@5 against size, drawn with PIL: no plotting dependency); --merge keeps the rows of
other sizes from scale_curve.json. Pass --no-write to only print, --results DIR to write elsewhere.

The vectors are synthetic but shaped like CLIP image embeddings, not uniform noise (on which every ANN index is
at its worst): dim 512, L2-normalised, a mixture of 1,000 Gaussian clusters of uneven size around a shared mean
direction (random pairs have cosine ~0.25), each cluster spread along its own 32-dimensional subspace plus
isotropic noise. Queries are held-out points from the same mixture with a small perturbation (a new photo of a
familiar scene). Ground truth is exact top-5 inner product over the whole set, streamed chunk by chunk.

Candidates at each size: the exact `Flat` index (the builder's default), `HNSW32` (graph over the full vectors;
efSearch tuned), and inverted lists with compressed codes, `IVF{nlist},SQ8` (8-bit, 4x smaller than fp32) and
`IVF{nlist},SQfp16` (2x smaller), nlist ~ 4*sqrt(n), nprobe tuned (an HNSW coarse quantizer above 4,096 lists).
A search parameter is tuned on 500 queries to the smallest value reaching recall@5 >= 0.985, then recall@5 and
latency are measured on 1,000 other queries (the margin keeps held-out recall >= 0.98). Latency is one query at a
time (nq=1, as the app runs them) on one FAISS thread: p50 and p95 of wall time, and p50 of the query's CPU time,
which is what it costs on an idle core (on a shared machine, wall time also holds other processes' time slices).
Memory is the serialised index size, which is what the app holds in RAM for it. An index is skipped where it
would not fit in this machine's memory or would take hours to build on it (--flat-max, --hnsw-max); the table
then gives an estimate from the biggest size it ran at, marked as one.

The vectors are generated once for the biggest size into a memory-mapped scratch file (4 GB per million;
--scratch to place it) and removed at the end. Run time on 2 cores: about 20 min for the default sizes; 10M adds
about an hour and needs ~12 GB of free RAM for the compressed indexes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np
import torch
from faiss.contrib.clustering import two_level_clustering
from faiss.contrib.ivf_tools import add_preassigned

from benchmarks.common import Report, arguments, loadavg
from builder.index import HNSW_EF_CONSTRUCTION, choose_index, tune_params

DIM = 512
K = 5
TARGET_RECALL = 0.98
TUNE_TARGET = 0.985  # tuned with a margin, so that recall on the held-out queries stays >= TARGET_RECALL
TARGET_P50_MS = 10.0
CHUNK = 250_000
TUNE_QUERIES, EVAL_QUERIES = 500, 1000
CHOICE = "**builder's choice**"
NOT_RUN_HERE = "not run at this size in these runs"
ASSIGN_EF_SEARCH = 128  # HNSW coarse quantizer's efSearch when adding vectors to lists (see add_to_lists)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


# --- data ---------------------------------------------------------------------------------------------------------
class Synthetic:
    """Clustered, anisotropic, L2-normalised vectors; row i of a size-N set is row i of every bigger set."""

    def __init__(self, dim: int = DIM, clusters: int = 1000, rank: int = 32, spread: float = 0.9, noise: float = 0.35,
                 shared: float = 0.6, seed: int = 0):
        rng = np.random.default_rng(seed)
        mean = rng.standard_normal(dim)
        mean /= np.linalg.norm(mean)
        centers = rng.standard_normal((clusters, dim)) / math.sqrt(dim) + shared * mean
        self.centers = torch.from_numpy((centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(np.float32))
        decay = np.arange(1, rank + 1) ** -0.5  # a decaying spectrum within each cluster, as in real embeddings
        decay *= spread / np.sqrt((decay ** 2).sum())
        bases = rng.standard_normal((clusters, rank, dim)) / math.sqrt(dim) * decay[None, :, None]
        self.bases = torch.from_numpy(bases.astype(np.float32))
        self.weights = rng.dirichlet(np.full(clusters, 2.0))
        self.dim, self.rank, self.noise = dim, rank, noise

    def chunk(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, self.weights)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.dim, generator=generator) * (self.noise / math.sqrt(self.dim))
        z = torch.randn(n, self.rank, generator=generator)
        labels = torch.from_numpy(np.repeat(np.arange(len(counts)), counts))
        x += self.centers[labels]
        starts = np.concatenate([[0], np.cumsum(counts)])
        for cluster in np.flatnonzero(counts):  # rows are grouped by cluster, each gets its own subspace
            lo, hi = starts[cluster], starts[cluster + 1]
            x[lo:hi] += z[lo:hi] @ self.bases[cluster]
        x = torch.nn.functional.normalize(x, dim=1)
        return x[torch.from_numpy(rng.permutation(n))].numpy()

    def queries(self, n: int, jitter: float = 0.15) -> np.ndarray:
        x = torch.from_numpy(self.chunk(n, seed=7))
        x += torch.randn(x.shape, generator=torch.Generator().manual_seed(8)) * (jitter / math.sqrt(self.dim))
        return torch.nn.functional.normalize(x, dim=1).numpy()


# --- indexes -------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    size: int
    name: str
    factory: str
    params: str = ""
    build_s: float | None = None
    memory_mb: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    cpu_p50_ms: float | None = None
    recall: float | None = None
    note: str = ""
    choice: bool = False  # the builder's choice at this size (set when the table is written)
    estimate: str = ""  # "; estimate from ..." for an index not run at this size (set by extrapolate)

    @property
    def shown_note(self) -> str:
        """The table's note cell: the choice mark, the note, then the estimate."""
        note = CHOICE + ("; " + self.note if self.note else "") if self.choice else self.note
        return note + self.estimate

    @property
    def meets(self) -> bool:
        return self.recall is not None and self.p50_ms is not None and \
            self.recall >= TARGET_RECALL and self.p50_ms <= TARGET_P50_MS


def nlist_for(n: int) -> int:
    """About 4*sqrt(n) inverted lists, a power of two: ~250-1,000 vectors per list."""
    return int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(n))))))


CANDIDATES = ("Flat", "auto", "HNSW32", "IVF-SQ8", "IVF-SQfp16")
DEFAULT_CANDIDATES = "Flat,auto,IVF-SQ8,IVF-SQfp16"


def candidates(n: int, auto: tuple[str, str], wanted: list[str]) -> list[tuple[str, str, str, float]]:
    """(name, FAISS factory, the search parameter to tune or "=PARAMS" to use as given, bytes per vector in RAM).

    "auto" is the builder's own choice for n (builder.index.choose_index), built as build_index builds it and its
    search effort tuned by builder.index.tune_params; it is left out where another candidate is the same index.
    HNSW32 is FAISS's default graph (efConstruction 40). Up to 4,096 lists the IVF coarse quantizer is exact (0.3 ms
    per query at 4,096); beyond, an HNSW graph over the centroids (adding 10M vectors to 16,384 exact centroids is
    ~170 TFLOP), searched with quantizer_efSearch >= 2*nprobe: at its default of 16 it misses lists and caps recall
    (0.95 with every list probed).
    """
    nlist = nlist_for(n)
    ivf = f"IVF{nlist}" if nlist <= 4096 else f"IVF{nlist}_HNSW32"
    rows = [("Flat", "Flat", "", 4 * DIM), ("HNSW32", "HNSW32", "efSearch", 4 * DIM + 300),
            ("IVF-SQ8", f"{ivf},SQ8", "nprobe", DIM + 8), ("IVF-SQfp16", f"{ivf},SQfp16", "nprobe", 2 * DIM + 8)]
    factory, params = auto
    if factory not in {r[1] for r in rows} or params:
        code = 2 * DIM if "SQfp16" in factory else DIM if "SQ8" in factory else 4 * DIM
        rows.insert(1, ("auto", factory, "=" + params, code + (300 if factory.startswith("HNSW") else 8)))
    return [r for r in rows if r[0] in wanted]


class Vectors:
    """The synthetic gallery, generated once for the biggest size into a memory-mapped file and read as prefixes.

    In a --scratch folder the file is kept and reused by later runs (any kept file at least as big will do: the
    data are deterministic and every size is a prefix of the bigger ones), as are the exact top-5 answers.
    """

    def __init__(self, data: Synthetic, count: int, folder: Path, log):
        self.folder, self.seconds = folder, 0.0
        kept = sorted((int(f.stem.split("-")[1]), f) for f in folder.glob("vectors-*.f32"))
        kept = [(have, f) for have, f in kept if have >= count and f.stat().st_size == have * DIM * 4]
        if kept:
            have, self.path = kept[0]
            self.array = np.memmap(self.path, dtype=np.float32, mode="r", shape=(have, DIM))
            log(f"reusing {have:,} vectors from {self.path}")
            return
        self.path = folder / f"vectors-{count}.f32"
        partial = self.path.with_suffix(".partial")
        self.array = np.memmap(partial, dtype=np.float32, mode="w+", shape=(count, DIM))
        started = time.perf_counter()
        for number, start in enumerate(range(0, count, CHUNK)):
            stop = min(count, start + CHUNK)
            self.array[start:stop] = data.chunk(CHUNK, seed=1000 + number)[:stop - start]
            if number % 8 == 7:
                log(f"generated {stop:,} of {count:,} vectors")
        self.array.flush()
        os.replace(partial, self.path)
        self.seconds = time.perf_counter() - started

    def chunks(self, n: int):
        for start in range(0, n, CHUNK):
            yield np.ascontiguousarray(self.array[start:min(n, start + CHUNK)])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))


def exact_top(vectors: Vectors, n: int, queries: np.ndarray) -> np.ndarray:
    cached = vectors.folder / f"truth-{n}-{len(queries)}.npy"
    if cached.exists():
        return np.load(cached)
    heap = faiss.ResultHeap(len(queries), K, keep_max=True)
    offset = 0
    for chunk in vectors.chunks(n):
        exact = faiss.IndexFlatIP(DIM)
        exact.add(chunk)
        scores, ids = exact.search(queries, K)
        heap.add_result(scores, np.where(ids >= 0, ids + offset, -1))
        offset += len(chunk)
    heap.finalize()
    np.save(cached, heap.I)
    return heap.I


def tune(index, knob: str, queries: np.ndarray, truth: np.ndarray) -> tuple[str, float]:
    """The smallest setting of `knob` that reaches TUNE_TARGET on the tuning queries (else the largest tried)."""
    params = faiss.ParameterSpace()
    if knob == "efSearch":
        grid = [f"efSearch={v}" for v in EF_SEARCH]
    else:
        ivf = faiss.extract_index_ivf(index)
        graph = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        grid = [f"nprobe={v}" + (f",quantizer_efSearch={max(64, 2 * v)}" if graph else "")
                for v in NPROBE if v <= ivf.nlist]
    best = ("", 0.0)
    for setting in grid:
        params.set_index_parameters(index, setting)
        got = recall(index.search(queries, K)[1], truth)
        best = (setting, got)
        if got >= TUNE_TARGET:
            break
    return best


def latencies(index, queries: np.ndarray, budget_s: float = 20.0) -> tuple[float, float, float]:
    """Wall p50, wall p95 and CPU-time p50 of one-query searches, in ms; stops early on slow (exact, big) indexes.

    One FAISS thread: a single query runs on one thread in Flat, HNSW and IVF alike, and OpenMP's fan-out only adds
    wake-up jitter. CPU time is what the query costs on an idle core; wall time also holds the time slices other
    processes took, which on a shared machine is most of the tail.
    """
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for q in queries[:5]:
            index.search(q[None], K)
        wall, cpu, started = [], [], time.perf_counter()
        for q in queries:
            t, c = time.perf_counter(), time.thread_time()
            index.search(q[None], K)
            wall.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.thread_time() - c) * 1e3)
            if len(wall) >= 30 and time.perf_counter() - started > budget_s:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    wall.sort()
    return statistics.median(wall), wall[min(len(wall) - 1, int(0.95 * len(wall)))], statistics.median(cpu)


def index_megabytes(index, folder: Path) -> float:
    path = folder / "index.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size / 2**20
    path.unlink()
    return size


def coarse_centroids(vectors: Vectors, n: int, nlist: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Inverted-list centroids trained on 40 gallery vectors per list (the first rows: their order is random).

    Two-level k-means (sqrt(nlist) coarse clusters, then each split in proportion to its size) instead of FAISS's
    flat k-means: at nlist=16,384 flat k-means over FAISS's default sample costs ~100 TFLOP, hours on 2 cores;
    two-level costs ~1% of that for lists of near-equal quality. Centroids are normalised, as the vectors are
    (spherical k-means, for inner product). Returns centroids, the training sample and the seconds it took.
    """
    started = time.perf_counter()
    sample = np.ascontiguousarray(vectors.array[:min(n, 40 * nlist)])
    centroids, _ = two_level_clustering(sample, int(math.sqrt(nlist)), nlist, clustering_niter=10)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids, sample, time.perf_counter() - started


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 2**62


def run_size(n: int, vectors: Vectors, queries: np.ndarray, auto: tuple[str, str], args, folder: Path,
             log) -> list[Row]:
    started = time.perf_counter()
    truth = exact_top(vectors, n, queries)
    log(f"  {n:,}: exact top-{K} of {len(queries):,} queries in {time.perf_counter() - started:.0f} s")
    tune_q, eval_q = queries[:TUNE_QUERIES], queries[TUNE_QUERIES:]
    tune_truth, eval_truth = truth[:TUNE_QUERIES], truth[TUNE_QUERIES:]
    rows, coarse = [], {}
    for name, factory, knob, per_vector in candidates(n, auto, args.candidates):
        row = Row(n, name, factory)
        rows.append(row)
        need = n * per_vector * 1.15 + 2**30
        graph = factory.startswith("HNSW")
        if name == "Flat" and n > args.flat_max or graph and n > args.hnsw_max:
            row.note = f"not run (--{'flat' if name == 'Flat' else 'hnsw'}-max): " + (
                "fp32 vectors alone exceed this machine's RAM" if name == "Flat" else
                "hours to build on 2 cores" + (", and the fp32 vectors alone exceed this machine's RAM"
                                               if per_vector >= 4 * DIM else ""))
            continue
        if need > available_bytes():
            row.note = f"not run: needs ~{need / 2**30:.0f} GiB, {available_bytes() / 2**30:.0f} GiB available"
            continue
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        build = 0.0
        if graph and name == "auto":  # as build_index builds it
            index.hnsw.efConstruction = max(index.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
        if not index.is_trained:
            ivf = faiss.extract_index_ivf(index)
            if ivf.nlist not in coarse:
                coarse[ivf.nlist] = coarse_centroids(vectors, n, ivf.nlist)
                log(f"  {n:,}: {ivf.nlist:,} list centroids from {len(coarse[ivf.nlist][1]):,} vectors in "
                    f"{coarse[ivf.nlist][2]:.0f} s")
            centroids, sample, seconds = coarse[ivf.nlist][:3]
            started = time.perf_counter()
            ivf.quantizer.add(centroids)
            index.train(sample)  # the quantizer is complete, so this trains the codes only (if they need it)
            build = seconds + time.perf_counter() - started
            build += add_to_lists(index, vectors, n, coarse, log)
        else:
            for number, chunk in enumerate(vectors.chunks(n)):
                started = time.perf_counter()
                index.add(chunk)
                build += time.perf_counter() - started
                if graph and number % 4 == 3:
                    log(f"  {n:,}: {factory} {(number + 1) * CHUNK:,} vectors added, {build:.0f} s")
        row.build_s = build
        row.memory_mb = index_megabytes(index, folder)
        if knob.startswith("="):
            row.params = knob[1:]
            if row.params:
                faiss.ParameterSpace().set_index_parameters(index, row.params)
            if row.params:  # build_index(..., "auto") tunes its search effort the same way
                row.params = tune_params(index, row.params, tune_q, tune_truth)
            row.note = "as the builder builds it" + (f" (efConstruction {index.hnsw.efConstruction})"
                                                     if graph else "") + \
                "; effort tuned by the builder's rule (builder.index.tune_params)"
            row.recall = recall(index.search(eval_q, K)[1], eval_truth)
        elif knob:
            row.params, tuned = tune(index, knob, tune_q, tune_truth)
            log(f"  {n:,}: {factory} tuned to {row.params} (recall {tuned:.4f} on the tuning queries)")
            row.recall = recall(index.search(eval_q, K)[1], eval_truth)
            if name == "HNSW32":
                row.note = f"efConstruction {index.hnsw.efConstruction} (FAISS default)"
        else:
            row.recall = 1.0  # exact search: the ground truth itself
            row.note = "exact"
        row.p50_ms, row.p95_ms, row.cpu_p50_ms = latencies(index, eval_q)
        log(f"  {n:,}: {name} {factory} {row.params} recall@5 {row.recall:.4f} p50 {row.p50_ms:.2f} ms "
            f"(cpu {row.cpu_p50_ms:.2f}) build {row.build_s:.0f} s {row.memory_mb:,.0f} MB")
        del index
    return rows


def add_to_lists(index, vectors: Vectors, n: int, coarse: dict, log) -> float:
    """Add n vectors to an IVF index; returns the seconds a build would spend (assignment included).

    Each vector goes to its nearest centroid. With an HNSW coarse quantizer that needs ASSIGN_EF_SEARCH: at
    FAISS's default efSearch of 16, 32% of vectors land in a wrong list at 16,384 lists (2% at 64, 0.4% at 128),
    and no nprobe finds them again. The assignment is computed once per list count and shared by the indexes
    that use the same centroids; each is charged its full time.
    """
    ivf = faiss.extract_index_ivf(index)
    entry = coarse[ivf.nlist]
    if len(entry) == 3:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = ASSIGN_EF_SEARCH
        started, lists = time.perf_counter(), []
        for chunk in vectors.chunks(n):
            lists.append(ivf.quantizer.assign(chunk, 1).ravel())
        coarse[ivf.nlist] = entry = (*entry, np.concatenate(lists), time.perf_counter() - started)
        log(f"  {n:,}: assigned to {ivf.nlist:,} lists in {entry[4]:.0f} s")
    assignment, seconds = entry[3], entry[4]
    started, offset = time.perf_counter(), 0
    for chunk in vectors.chunks(n):
        add_preassigned(ivf, chunk, assignment[offset:offset + len(chunk)])
        offset += len(chunk)
    index.ntotal = ivf.ntotal
    return seconds + time.perf_counter() - started


def extrapolate(rows: list[Row]) -> None:
    """For indexes not run at a size, an estimate from the biggest size the same index ran at, said to be one."""
    for row in rows:
        row.estimate = ""
        if row.p50_ms is not None or not (row.name == "Flat" or "HNSW" in row.factory):
            continue
        ran = [r for r in rows if r.factory.split("IVF")[0] == row.factory.split("IVF")[0] and r.name == row.name
               and r.p50_ms is not None and r.size < row.size]
        if not ran:
            continue
        base = max(ran, key=lambda r: r.size)
        scale = row.size / base.size
        memory = base.memory_mb * scale
        size = f"{memory / 1024:,.1f} GiB" if memory >= 1024 else f"{memory:,.0f} MB"
        if row.name == "Flat":  # a scan: time and memory grow linearly
            row.estimate = f"; estimate from {_short(base.size)}: p50 CPU ≈ {base.cpu_p50_ms * scale:,.0f} ms, {size}"
        else:  # graph build ~ n log n
            hours = base.build_s * scale * math.log(row.size) / math.log(base.size) / 3600
            row.estimate = f"; estimate from {_short(base.size)}: build ≈ {hours:.1f} h here, {size}"


# --- output --------------------------------------------------------------------------------------------------------
def fmt(value, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def markdown(rows: list[Row], runs: list[dict], choices: dict[int, tuple[str, str]]) -> str:
    biggest = [r for r in rows if r.choice and r.p50_ms is not None and r.size >= 10_000_000]
    lines = [
        f"faiss {faiss.__version__}. Wall times (build, p50, p95) are noisy on a shared machine; CPU times are the "
        f"steadier figure. Synthetic CLIP-like vectors (dim {DIM}, see the script's docstring), {EVAL_QUERIES} "
        f"held-out perturbed queries; search parameters tuned on {TUNE_QUERIES} other queries to the smallest value "
        f"reaching recall@5 >= {TUNE_TARGET}; the builder's own choice (\"auto\") is built as build_index builds it "
        "and its effort tuned on the same 500 queries by the builder's own rule (builder.index.tune_params, from its "
        "chosen start). p50/p95: wall time of one query at a time on one FAISS thread; p50 CPU: that query's CPU time "
        "(what it costs on an idle core). Index size: the serialised index, what the app holds in RAM for it (the app "
        f"also keeps embeddings.npy, 2 KB per vector). Target for the builder's choice: recall@5 >= {TARGET_RECALL} "
        f"and p50 <= {TARGET_P50_MS:g} ms. Rows kept from earlier runs (--merge) carry those runs' machines: see Runs.",
        "",
    ]
    if biggest:  # the conclusion the 10M run of 2026-11-21 supports; said only where such a row is in the table
        lines += [
            "Where the limit is: the builder's choice meets the target at every size measured, 10M included. Memory "
            "sets the limit, not speed: the index holds ~0.5 GB per million vectors in RAM and the app's metadata "
            "table (captions, categories, ids) ~1.4 GB per million at COCO's five captions (measured at 123k), so a "
            "16 GB Space serves ~7M captioned images; embeddings.npy (2 KB per vector) is memory-mapped and read a "
            "row at a time.",
            "",
        ]
    lines += [
        "Runs:",
        *[f"- {run['line']}" for run in runs],
        "",
        "| vectors | index | FAISS factory | search params | build (s) | index size (MB) | p50 (ms) | p95 (ms) "
        "| p50 CPU (ms) | recall@5 vs exact | meets target | note |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.size:,} | {row.name} | `{row.factory}` | {row.params or '—'} | {fmt(row.build_s, '.1f')} | "
            f"{fmt(row.memory_mb, ',.0f')} | {fmt(row.p50_ms, '.2f')} | {fmt(row.p95_ms, '.2f')} | "
            f"{fmt(row.cpu_p50_ms, '.2f')} | {fmt(row.recall, '.4f')} | "
            f"{'yes' if row.meets else ('no' if row.recall is not None else '—')} | {row.shown_note} |")
    lines += ["", "Builder's choice (from `builder.index.choose_index`): " + "; ".join(
        f"{_short(n)} → `{factory}`" + (f" {params}" if params else "") for n, (factory, params) in choices.items())
        + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Two panels, log-x: p50 latency (log-y) and recall@5, one line per index; PIL only."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, pad = 1100, 480, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    colors = {"Flat": (31, 119, 180), "auto": (255, 127, 14), "HNSW32": (214, 39, 40), "IVF-SQ8": (44, 160, 44),
              "IVF-SQfp16": (148, 103, 189)}
    colors = {name: color for name, color in colors.items() if any(r.name == name for r in rows)}
    measured = [r for r in rows if r.p50_ms is not None]
    if not measured:
        return
    sizes = sorted({r.size for r in rows})
    x_lo, x_hi = math.log10(min(sizes)) - 0.15, math.log10(max(sizes)) + 0.15
    panels = [
        ("p50 latency per query (ms, log)", lambda r: math.log10(r.p50_ms), _log_ticks(measured), 0),
        ("recall@5 vs exact", lambda r: r.recall, [0.9, 0.92, 0.94, 0.96, 0.98, 1.0], 1),
    ]
    panel_w = (width - 3 * pad) // 2
    for title, value, ticks, column in panels:
        left, top, right, bottom = pad + column * (panel_w + pad), 40, pad + column * (panel_w + pad) + panel_w, \
            height - 70
        values = [value(r) for r in measured] + [t[0] if isinstance(t, tuple) else t for t in ticks]
        y_lo, y_hi = min(values), max(values)
        if column == 1:
            y_lo = min(y_lo, 0.9)
        span = (y_hi - y_lo) or 1.0
        y_lo, y_hi = y_lo - 0.05 * span, y_hi + 0.05 * span

        def to_xy(size, y, left=left, right=right, top=top, bottom=bottom, y_lo=y_lo, y_hi=y_hi):
            return (left + (math.log10(size) - x_lo) / (x_hi - x_lo) * (right - left),
                    bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, top - 22), title, fill="black", font=font)
        for tick in ticks:
            y, label = tick if isinstance(tick, tuple) else (tick, f"{tick:.2f}")
            if y_lo <= y <= y_hi:
                _, ty = to_xy(sizes[0], y)
                draw.line([left, ty, right, ty], fill=(225, 225, 225))
                draw.text((left - 8, ty), label, fill="black", font=font, anchor="rm")
        target = math.log10(TARGET_P50_MS) if column == 0 else TARGET_RECALL
        _, ty = to_xy(sizes[0], target)
        draw.line([left, ty, right, ty], fill=(120, 120, 120), width=2)
        draw.text((left + 6, ty - 4), "target", fill=(90, 90, 90), font=font, anchor="lb")
        for size in sizes:
            tx, _ = to_xy(size, y_lo)
            draw.line([tx, bottom, tx, bottom + 5], fill="black")
            draw.text((tx, bottom + 8), _short(size), fill="black", font=font, anchor="mt")
        draw.text(((left + right) / 2, bottom + 30), "vectors (log scale)", fill="black", font=font, anchor="mt")
        for name, color in colors.items():
            points = [to_xy(r.size, value(r)) for r in sorted(measured, key=lambda r: r.size) if r.name == name]
            if len(points) > 1:
                draw.line(points, fill=color, width=3)
            for px, py in points:
                draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=color)
    for number, (name, color) in enumerate(colors.items()):
        x = pad + number * 160
        draw.rectangle([x, height - 22, x + 14, height - 8], fill=color)
        draw.text((x + 20, height - 15), name, fill="black", font=font, anchor="lm")
    image.save(path, optimize=True)


def _log_ticks(rows: list[Row]) -> list[tuple[float, str]]:
    lo = math.floor(math.log10(min(r.p50_ms for r in rows)))
    hi = math.ceil(math.log10(max(r.p50_ms for r in rows)))
    return [(e, f"{10.0 ** e:g}") for e in range(lo, hi + 1)]


def _short(n: int) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, quick="a check that it runs end to end: 10k vectors, Flat and auto only")
    parser.add_argument("--sizes", default="10000,123287,1000000", help="comma-separated vector counts")
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                        help=f"indexes to measure, from {','.join(CANDIDATES)} (default %(default)s)")
    parser.add_argument("--flat-max", type=int, default=2_000_000, help="largest size for the exact index (RAM)")
    parser.add_argument("--hnsw-max", type=int, default=2_000_000, help="largest size to build HNSW graphs at (time)")
    parser.add_argument("--scratch", default=None, help="keep the memory-mapped vectors (4 GB per 1M) and exact "
                        "answers in this folder, for later runs (default: a temporary folder, removed at the end)")
    parser.add_argument("--merge", action="store_true", help="keep the rows of other sizes already in "
                        "scale_curve.json (e.g. a separate 10M run) and replace those of --sizes")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.candidates = "10000", "Flat,auto"
    report = Report.start("scale_curve", "Index scale curve")
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if unknown := set(args.candidates) - set(CANDIDATES):
        parser.error(f"--candidates: unknown {', '.join(sorted(unknown))} (choose from {', '.join(CANDIDATES)})")
    started = time.perf_counter()
    measuring = {(n, c[0]) for n in sizes for c in candidates(n, choose_index(n, DIM), args.candidates)}
    kept, runs = read_results(args.results / "scale_curve.json", measuring) if args.merge else ([], [])

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    data = Synthetic()
    queries = data.queries(TUNE_QUERIES + EVAL_QUERIES)
    rows: list[Row] = []
    run = f"`{report.command}` on {report.machine}, load average {report.load_start} at start"
    if args.scratch:
        Path(args.scratch).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(args.scratch) if args.scratch else tempfile.TemporaryDirectory()) as scratch:
        vectors = Vectors(data, max(sizes), Path(scratch), log)
        if vectors.seconds:
            log(f"generated {max(sizes):,} vectors in {vectors.seconds:.0f} s")
        for n in sizes:
            log(f"{n:,} vectors")
            rows.extend(run_size(n, vectors, queries, choose_index(n, DIM), args, Path(scratch), log))
            if n != sizes[-1]:  # kept if a later size fails
                write(kept + rows, runs + [{"sizes": sizes, "line": f"{run} (running)"}], args, report, final=False)
        del vectors
    minutes = (time.perf_counter() - started) / 60
    line = f"{run}, {report.load_end or loadavg()} at the end: {minutes:.0f} min, {report.date}"
    write(kept + rows, runs + [{"sizes": sizes, "line": line}], args, report, final=True)
    return 0


def write(rows: list[Row], runs: list[dict], args, report: Report, final: bool) -> None:
    rows.sort(key=lambda r: (r.size, CANDIDATES.index(r.name) if r.name in CANDIDATES else 99))
    choices = {n: choose_index(n, DIM) for n in sorted({r.size for r in rows})}
    for row in rows:  # mark the builder's choice (again: a merged table may predate the current rule)
        factory, params = choices[row.size]
        row.choice = row.factory == factory and (row.name == "auto" or not params)
    for n, (factory, params) in choices.items():  # a merged size measured before this choice existed
        if not any(r.size == n and r.choice for r in rows):
            rows.append(Row(n, "auto", factory, params, note=NOT_RUN_HERE, choice=True))
    rows.sort(key=lambda r: (r.size, CANDIDATES.index(r.name) if r.name in CANDIDATES else 99))
    extrapolate(rows)
    table = markdown(rows, runs, choices)
    if args.no_write:
        print(report.header() + "\n" + table)
    else:
        report.write(table + ("\n(--quick: a check that the script runs, not figures to quote)\n" if args.quick else
                              ""), args.results, final)
        measured = [r for r in rows if r.note != NOT_RUN_HERE]  # placeholders are made again from the rule
        (args.results / "scale_curve.json").write_text(json.dumps(
            {"partial": not final, "runs": runs, "rows": [row_data(r) for r in measured]}, indent=1,
            ensure_ascii=False) + "\n")
        plot(rows, args.results / "scale_curve.png")
        if final:
            print(f"wrote {args.results / 'scale_curve.json'} and {args.results / 'scale_curve.png'}")


DERIVED = ("choice", "estimate")  # recomputed whenever the table is written, so not kept


def row_data(row: Row) -> dict:
    return {name: value for name, value in asdict(row).items() if name not in DERIVED}


def read_results(path: Path, replaced: set[tuple[int, str]]) -> tuple[list[Row], list[dict]]:
    """The rows of an earlier scale_curve.json that this run does not measure again (by size and index), and the
    runs that made them."""
    if not path.exists():
        return [], []
    data = json.loads(path.read_text())
    known = {f.name for f in fields(Row)} - set(DERIVED)
    rows = [Row(**{k: v for k, v in row.items() if k in known}) for row in data["rows"]
            if (row["size"], row["name"]) not in replaced]
    kept_sizes = {r.size for r in rows}
    return rows, [run for run in data["runs"] if kept_sizes & set(run["sizes"])]


if __name__ == "__main__":
    raise SystemExit(main())

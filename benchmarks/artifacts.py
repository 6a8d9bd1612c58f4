"""Inputs the benchmarks measure with: COCO-like JPEGs and captions, and COCO-size artifact folders in the builder's
exact format made from synthetic vectors (no 123k images need embedding)."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.common import fresh_folder
from benchmarks.models import DEFAULT_MODEL, random_model

COCO_COUNT = 123_287  # train2017 118,287 + val2017 5,000
# instance boxes an object index of all of COCO holds: ~897k listed, ~450-550k with a shorter side of at least 32 px
# (builder --object-min-side; an estimate, no COCO annotations here)
COCO_OBJECTS = 500_000
# synthetic_objects' default index: builder.index.choose_index's pick for the box count at its starting search effort,
# kept whatever its recall. "auto" (the builder's own tuning) falls back to exact search on these vectors: their
# isotropic noise leaves HNSW32 at recall@5 ~0.89 even at efSearch 512, where the image vectors reach 0.999 at 128, so
# it would measure a 1.5 GB Flat index no real build of COCO's crops is expected to need (decision 0039).
CHOSEN = "chosen"
CATEGORIES = ("person", "bicycle", "car", "bus", "dog", "cat", "horse", "giraffe", "pizza", "broccoli", "laptop",
              "surfboard", "frisbee", "bench", "umbrella", "kite", "clock", "train", "boat", "chair")
WORDS = ("a man", "a woman", "two people", "a dog", "a cat", "a red bus", "a plate of food", "a giraffe",
         "a surfer", "a train", "a kite", "a laptop", "a group of children", "a horse", "a pizza", "a clock tower")
VERBS = ("is sitting", "standing together", "walking slowly", "that is parked", "looking at the camera",
         "covered with toppings", "flying high", "waiting patiently", "lying down", "riding along")
PLACES = ("on a city street", "in a park", "on the beach", "in a kitchen", "next to a building", "in a field",
          "at the station", "on a table", "in the snow", "near the water", "in a living room", "on a wave")
# COCO-like captions at caption length: what a visitor types into the text box.
CAPTIONS = (
    "a man riding a wave on top of a surfboard", "a plate of food with broccoli and rice",
    "two giraffes standing next to each other in a field", "a red double decker bus driving down a city street",
    "a cat sleeping on a laptop keyboard", "a group of people flying kites on the beach",
    "a kitchen with a stove and a refrigerator", "a dog catching a frisbee in a park",
    "a train traveling down the tracks near a station", "a young boy swinging a baseball bat",
    "a bowl of fruit on a wooden table", "a woman holding an umbrella in the rain",
    "an elephant walking through tall grass", "a pizza with cheese and tomatoes on a pan",
    "a man skiing down a snowy mountain", "a bathroom with a toilet and a sink",
    "a clock tower in the middle of a town", "a herd of sheep grazing on a green hill",
    "a person riding a horse on a dirt road", "a living room with a couch and a television",
    "a boat floating on a calm lake at sunset", "a child eating a slice of birthday cake",
    "a stop sign on the corner of a street", "a bird sitting on a branch of a tree",
    "a motorcycle parked next to a brick wall", "two men playing tennis on a clay court",
    "a large airplane taking off from a runway", "a teddy bear sitting on a bed with pillows",
    "a skateboarder doing a trick on a ramp", "a zebra standing alone in the dry savanna",
    "a laptop and a cup of coffee on a desk", "a fire hydrant on a sidewalk in winter",
    "people waiting for a bus at a bus stop", "a bunch of bananas hanging in a market",
    "a girl brushing her teeth in front of a mirror", "a bench in a park covered with autumn leaves",
    "a cow standing in a field near a fence", "a sandwich and french fries on a white plate",
    "a man using a cell phone on a busy street", "a vase with red flowers on a window sill",
)


def text_queries(count: int, first: int = 0, seed: int = 0) -> list[str]:
    """Distinct, caption-like queries numbered from `first` (distinct, so the app's text-vector cache never answers
    them; give each part of a run its own numbers)."""
    rng = np.random.default_rng(seed)
    return [f"{WORDS[i]} {PLACES[j]} #{first + n}" for n, (i, j) in
            enumerate(rng.integers(0, [len(WORDS), len(PLACES)], (count, 2)))]


def coco_like_jpegs(folder: Path, count: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """`count` photo-sized JPEGs with texture (noise + shapes) so decoding costs what a real photo costs; cached."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(seed + existing)
    for number in range(existing, count):
        base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            draw.ellipse([x, y, x + rng.integers(20, 200), y + rng.integers(20, 200)],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"{number:06d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))[:count]


# --- a COCO-size artifact folder from synthetic vectors ---------------------------------------------------------
def clustered_vectors(count: int, dim: int, seed: int = 0, per_topic: int = 120, subtopics: int = 8,
                      noise: float = 0.35) -> np.ndarray:
    """L2-normalised float32 vectors shaped like CLIP image embeddings: a shared direction (CLIP's cone), topics,
    sub-topics and noise; nearest neighbours at cosine ~0.85, same topic ~0.65, unrelated ~0.3."""
    rng = np.random.default_rng(seed)

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    topics = max(1, count // per_topic)
    common = unit(rng.standard_normal(dim, dtype=np.float32))
    centres = unit(rng.standard_normal((topics, dim), dtype=np.float32))
    sub_centres = unit(rng.standard_normal((topics * subtopics, dim), dtype=np.float32))
    sub = rng.integers(0, topics * subtopics, count)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 16384):  # in blocks: a few hundred MB less at peak
        rows = sub[start:start + 16384]
        jitter = rng.standard_normal((len(rows), dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + 16384] = unit(0.5 * common + 0.6 * centres[rows // subtopics] + 0.45 * sub_centres[rows]
                                        + noise * jitter)
    return out


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail_pool(kind: str, seed: int = 0) -> list[bytes]:
    """JPEG thumbnails to cycle through. "tiny": 64x48, ~1 KB (what a browser test needs: cheap to serve).
    "realistic": 256x192 at quality 85 weighing what 256-px thumbnails of real photos weigh (~12-20 KB, mean ~15 KB):
    a smooth random colour field (bicubic from 32x24) plus grain of sigma 2..6; 256-px q85 thumbnails of the real
    photos among gradio's media assets weigh 8.8-21.5 KB."""
    rng = np.random.default_rng(seed)
    if kind == "tiny":
        return [_jpeg(np.asarray(Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((64, 48))),
                      80) for _ in range(64)]
    pool = []
    for _ in range(512):
        base = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        field = np.asarray(base.resize((256, 192), Image.Resampling.BICUBIC), dtype=np.float32)
        grain = rng.normal(0, rng.uniform(2, 6), (192, 256, 1))
        pool.append(_jpeg(np.clip(field + grain, 0, 255).astype(np.uint8), 85))
    return pool


def synthetic_artifacts(cache: Path, count: int = COCO_COUNT, thumbnails: str = "tiny", index: str = "auto",
                        seed: int = 0, atlas: bool = False, objects: int = 0, object_index: str = CHOSEN) -> Path:
    """A finished artifact folder in the builder's exact format, written by the builder's own shard writer, pack,
    index and manifest functions: `count` rows of clustered synthetic vectors, COCO-like metadata (ids, splits,
    5 captions, categories, urls), `thumbnails` from thumbnail_pool, served with the default model's random-weight
    stand-in (benchmarks.models). `atlas`: with the builder's atlas.npy too (minutes of t-SNE at COCO size).
    `objects`: with an object index of that many boxes too (synthetic_objects, `object_index`; COCO_OBJECTS is
    COCO's size). Cached under `cache`."""
    if objects:
        return _with_objects(cache, synthetic_artifacts(cache, count, thumbnails, index, seed, atlas), objects,
                             object_index, seed)
    import faiss

    from builder.atlas import write_atlas
    from builder.embed import THUMB_SIDE, Decoded, _write_shard, shard_ranges
    from builder.index import AUTO, build_index, choose_index
    from builder.pack import pack
    from builder.sources import Record, Source
    from clipsearch.core.encoder import Encoder
    from clipsearch.core.manifest import (
        FORMAT_VERSION,
        INDEX,
        MANIFEST,
        Manifest,
        SourceInfo,
        ThumbnailInfo,
        hash_files,
        write_manifest,
    )

    model = random_model(DEFAULT_MODEL, cache)
    factory, params = choose_index(count, 512) if index == AUTO else (index, "")
    out = cache / f"artifacts-{count}-{thumbnails}-{factory.replace(',', '_')}-{model.name}{'-atlas' * atlas}"
    if (out / MANIFEST).exists():
        return out
    started = time.perf_counter()
    info = Encoder.load(str(model), None, "cpu").info  # fp32: exactly what the builder records
    rng = np.random.default_rng(seed)
    val = min(5000, count // 20)
    source = Source()
    source.infos = [SourceInfo(kind="images", location="synthetic", splits=["train2017", "val2017"])]
    source.records = []
    for number in range(count):
        image_id = 9 + 3 * number
        split = "val2017" if number >= count - val else "train2017"
        name = f"{image_id:012d}.jpg"
        source.records.append(Record(
            image_id=image_id, split=split, file_name=name, locator=name, width=640, height=480,
            captions=[f"{WORDS[i]} {VERBS[v]} {PLACES[j]}"  # COCO-length captions (~50 characters)
                      for i, v, j in rng.integers(0, [len(WORDS), len(VERBS), len(PLACES)], (5, 3))],
            categories=sorted({CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), rng.integers(1, 5))}),
            url=f"http://images.cocodataset.org/{split}/{name}",
        ))
    vectors = clustered_vectors(count, info.dim, seed=seed)
    fresh_folder(out)
    work = out / ".work"
    pool = thumbnail_pool(thumbnails)
    ranges = shard_ranges(count, 4096)
    for shard, (lo, hi) in enumerate(ranges):
        items = [Decoded(i, None, pool[i % len(pool)], 640, 480, "") for i in range(lo, hi)]
        _write_shard(work, shard, (lo, hi), [(items, vectors[lo:hi])])
    packed = pack(source, work, out, len(ranges), info.dim)
    built, index_info = build_index(packed.vectors, factory, params)
    faiss.write_index(built, str(out / INDEX))
    shutil.rmtree(work)
    extra = [write_atlas(out, packed.vectors)] if atlas else []
    names = sorted([INDEX, *extra, *packed.files])  # exactly what was written here, as builder.finish lists them
    manifest = Manifest(
        format_version=FORMAT_VERSION, model=info.to_dict(), dim=info.dim, count=count, index=index_info,
        thumbnails=ThumbnailInfo(files=packed.thumb_files, max_side=THUMB_SIDE), sources=source.infos, skipped=[],
        evaluation={}, builder_version="benchmarks.artifacts.synthetic_artifacts",
        created_at="2000-01-01T00:00:00+00:00", build_seconds=round(time.perf_counter() - started, 1), device="cpu",
        files=hash_files(out, names),
    )
    write_manifest(out, manifest)
    return out


def with_serving_copy(folder: Path) -> Path:
    """The artifacts in `folder` plus the encoder's int8 serving copy and tower graphs, as a build publishes them
    by default (builder.serving): a sibling folder whose other files are hard links, made once."""
    from builder.serving import write_serving_copy
    from clipsearch.core.encoder import ModelInfo
    from clipsearch.core.manifest import MANIFEST, Manifest, hash_files, write_manifest
    from clipsearch.core.tower_graphs import RECIPE

    # the int8 copy, its ONNX image and text graphs (made by recipe RECIPE) and the torch towers they replace, each in
    # a file of its own (the layout of 2026-12-06: "-served" folders hold the towers inside the copy, and
    # "-served-towers-apart" ones graphs of recipe 1)
    out = folder.with_name(f"{folder.name}-served-towers-apart-graphs-r{RECIPE}")
    if (out / MANIFEST).exists():
        return out
    fresh_folder(out)
    manifest = Manifest.read(folder)
    for name in manifest.files:
        os.link(folder / name, out / name)
    serving = write_serving_copy(ModelInfo(**manifest.model), out)
    if serving is None:
        raise RuntimeError("the stand-in's int8 serving copy failed its check against fp32; see the log")
    manifest.serving, manifest.files = serving, {**manifest.files, **hash_files(out, serving.files)}
    write_manifest(out, manifest)
    return out

# --- an object index beside them ----------------------------------------------------------------------------------
OBJECT_FILES = ("objects.faiss", "objects.parquet", "objects.npy")  # clipsearch.core.manifest's OBJECTS_* names
OBJECTS_RECORD = "objects-manifest.json"  # a manifest carrying the cached object index's ObjectsInfo


def _with_objects(cache: Path, base: Path, objects: int, index: str, seed: int) -> Path:
    """`base` (a synthetic_artifacts folder) with an object index of `objects` boxes: base's files hard-linked (the
    same bytes, no copy), the object files of synthetic_objects linked beside them, a manifest listing them all."""
    import os

    from clipsearch.core.manifest import MANIFEST, Manifest, hash_files, write_manifest

    out = base.with_name(f"{base.name}-objects{objects}" + ("" if index == "auto" else f"-{index}"))
    if (out / MANIFEST).exists():
        return out
    parts = synthetic_objects(cache, base, objects, index, seed)
    manifest = Manifest.read(base)
    fresh_folder(out)
    for folder, names in ((base, list(manifest.files)), (parts, list(OBJECT_FILES))):
        for name in names:
            try:
                os.link(folder / name, out / name)
            except OSError:  # another file system: a copy
                shutil.copy2(folder / name, out / name)
    manifest.objects = Manifest.from_json((parts / OBJECTS_RECORD).read_text()).objects
    manifest.files = {**manifest.files, **hash_files(out, list(OBJECT_FILES))}
    write_manifest(out, manifest)
    return out


def synthetic_objects(cache: Path, base: Path, objects: int, index: str = CHOSEN, seed: int = 0) -> Path:
    """A folder holding objects.faiss, objects.parquet and objects.npy for the images of `base`, written by the
    builder's own functions (builder.pack.write_objects, builder.objects.index_objects: its evaluation, calibration
    and measured recall), and OBJECTS_RECORD describing them. `index`: CHOSEN (see there), "auto" (the builder's
    tuning and fallbacks) or a FAISS factory string. `objects` boxes spread
    over the images at random (~4 an image at COCO's size), each with a plausible box inside its 640x480 image (sides
    of 32 px, the builder's cut-off, to 90% of the picture), a category among its image's own (as in COCO, where an
    image's categories are those of its boxes; all of them COCO categories) and a vector near its image's (cosine
    ~0.8) and its category's. Cached under `cache`, shared by every thumbnail kind of the same rows."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from builder.index import AUTO, choose_index
    from builder.objects import index_objects
    from builder.pack import OBJECT_SCHEMA, PackedObjects, write_objects
    from clipsearch.core.encoder import Encoder
    from clipsearch.core.manifest import EMBEDDINGS, INDEX, METADATA, Manifest, write_manifest
    from clipsearch.core.objects import CONTEXT, MIN_BOX_SIDE

    manifest = Manifest.read(base)
    factory, params = choose_index(objects, manifest.dim) if index in (AUTO, CHOSEN) else (index, "")
    name = factory.replace(",", "_") + ("-chosen" if index == CHOSEN else "")
    if index == AUTO:
        factory, params = AUTO, ""  # the builder's tuning, falling back to stronger indexes below the recall target
    model = Path(manifest.model["model_id"])  # the random-weight stand-in's folder (synthetic_artifacts)
    out = cache / f"objects-{manifest.count}-{objects}-{name}-{model.name}-{seed}"
    if (out / OBJECTS_RECORD).exists():
        return out
    started = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    images = np.load(base / EMBEDDINGS, mmap_mode="r")
    meta = pq.read_table(base / METADATA, columns=["image_id", "width", "height", "categories"]).to_pydict()
    rows = np.sort(rng.integers(0, manifest.count, objects)).astype(np.int32)  # image rows in order, as pack writes
    width = np.asarray(meta["width"], np.float32)[rows]
    height = np.asarray(meta["height"], np.float32)[rows]
    # log-uniform sides from the cut-off to 90% of the picture: many small things, some filling the frame
    box_w = np.exp(rng.uniform(np.log(MIN_BOX_SIDE), np.log(0.9 * width)))
    box_h = np.exp(rng.uniform(np.log(MIN_BOX_SIDE), np.log(0.9 * height)))
    x0, y0 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
    names = [meta["categories"][row][rng.integers(len(meta["categories"][row]))] if meta["categories"][row]
             else "person" for row in rows]
    kinds = sorted(set(names))
    centres = rng.standard_normal((len(kinds), manifest.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    kind_of = np.searchsorted(kinds, names)
    vectors = np.empty((objects, manifest.dim), dtype=np.float32)
    for start in range(0, objects, 65536):  # in blocks: a few hundred MB less at peak
        end = min(objects, start + 65536)
        jitter = rng.standard_normal((end - start, manifest.dim), dtype=np.float32) / np.sqrt(manifest.dim)
        block = 0.8 * images[rows[start:end]] + 0.3 * centres[kind_of[start:end]] + 0.45 * jitter
        vectors[start:end] = block / np.linalg.norm(block, axis=1, keepdims=True)
    table = pa.table({"image_row": rows, "image_id": np.asarray(meta["image_id"], np.int64)[rows],
                      "x0": x0.astype(np.float32).round(2), "y0": y0.astype(np.float32).round(2),
                      "x1": (x0 + box_w).astype(np.float32).round(2), "y1": (y0 + box_h).astype(np.float32).round(2),
                      "category": names}, schema=OBJECT_SCHEMA)
    packed = PackedObjects(vectors, table, boxes_total=objects, boxes_kept=objects, min_side=MIN_BOX_SIDE,
                           context=CONTEXT)
    fresh_folder(out)
    write_objects(packed, out)
    encoder = Encoder.load(str(model), None, "cpu")
    info = index_objects(packed, out, factory, params, encoder, faiss.read_index(str(base / INDEX)),
                         meta["categories"])
    record = Manifest(**{**vars(manifest), "objects": info, "files": {},
                         "build_seconds": round(time.perf_counter() - started, 1)})
    write_manifest(out, record)
    (out / "manifest.json").rename(out / OBJECTS_RECORD)
    return out

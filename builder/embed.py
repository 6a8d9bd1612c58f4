"""Embed stage: decode images in parallel workers, encode on CPU/GPU, write resumable shards of vectors+thumbnails."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipsearch.core.encoder import Encoder, image_inputs
from clipsearch.core.images import ImageError, make_thumbnail, open_image
from clipsearch.core.objects import crop_with_context

from .children import die_with_parent
from .sources import Source

log = logging.getLogger(__name__)

THUMB_SIDE = 256


@dataclass
class Decoded:
    index: int
    pixels: dict[str, torch.Tensor] | None  # one image's model inputs (Encoder.preprocess, batch axis removed)
    thumbnail: bytes
    width: int
    height: int
    error: str
    objects: dict[str, torch.Tensor] | None = None  # model inputs of the record's box crops, in its boxes' order


class DecodeDataset(Dataset):
    """Runs in DataLoader workers: bytes -> upright RGB -> model pixels + thumbnail (+ the crops of its instance
    boxes when `context` is given); failures become records."""

    def __init__(self, source: Source, encoder: Encoder, thumb_side: int = THUMB_SIDE, context: float | None = None):
        self.source = source
        self.image_processor = encoder.image_processor
        self.draft_size = encoder.info.image_size
        self.thumb_side = thumb_side
        self.context = context

    def __len__(self) -> int:
        return len(self.source.records)

    def __getitem__(self, index: int) -> Decoded:
        record = self.source.records[index]
        try:
            image = open_image(self.source.read(record), max_bytes=None, draft_size=self._draft_size(record))
            pixels = {name: value[0] for name, value in image_inputs(self.image_processor, [image]).items()}
            width, height = image.info["original_size"]
            objects = None
            if self.context is not None and record.boxes:
                # crops from the one decoded image; JPEG draft decoding made it smaller, which crop_with_context
                # scales the boxes for
                crops = [crop_with_context(image, box[:4], self.context, (width, height)) for box in record.boxes]
                objects = image_inputs(self.image_processor, crops)
            return Decoded(index, pixels, make_thumbnail(image, self.thumb_side), width, height, "", objects)
        except ImageError as error:
            return Decoded(index, None, b"", 0, 0, str(error))
        except Exception as error:  # noqa: BLE001 - one bad file must never end a 123k-image build
            last = traceback.extract_tb(error.__traceback__)[-1]
            reason = f"unexpected {type(error).__name__}: {error} (at {Path(last.filename).name}:{last.lineno})"
            return Decoded(index, None, b"", 0, 0, reason)


    def _draft_size(self, record) -> int | None:
        """The smallest side to decode at: the model's input size, or, when boxes are cut from the picture, enough
        that its smallest box keeps the model's input size (None: full size, where the picture's size is unknown)."""
        if self.context is None or not record.boxes:
            return self.draft_size
        if not record.width or not record.height:
            return None
        smallest = min(min(box[2] - box[0], box[3] - box[1]) for box in record.boxes)
        return max(self.draft_size, math.ceil(min(record.width, record.height) * self.draft_size / smallest))


def _collate(items: list[Decoded]):
    """(items, the good images' pixels stacked, their box crops' pixels concatenated in item order or None)."""
    good = [item for item in items if item.pixels is not None]
    pixels = {name: torch.stack([item.pixels[name] for item in good]) for name in good[0].pixels} if good else None
    crops = [item.objects for item in good if item.objects is not None]
    objects = {name: torch.cat([crop[name] for crop in crops]) for name in crops[0]} if crops else None
    for item in good:
        item.pixels = None  # the stacked tensor carries them; keep the per-item records light
        if item.objects is not None:
            item.objects = len(next(iter(item.objects.values())))  # how many crops: the count is all a shard needs
    return items, pixels, objects


def _worker_init(parent: int, _worker: int) -> None:
    die_with_parent(parent)  # a builder killed with SIGKILL takes its workers with it (see builder.children)
    torch.set_num_threads(1)  # each worker decodes one image at a time; BLAS threads would only fight


def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, total)) for start in range(0, total, shard_size)]


def shard_dir(work: Path, shard: int) -> Path:
    return Path(work) / "shards" / f"{shard:05d}"


def embed_shards(source: Source, encoder: Encoder, work: Path, *, batch_size: int, shard_size: int,
                 num_workers: int, shards: list[int] | None = None, progress: bool = True,
                 context: float | None = None) -> dict:
    """Embed every shard (of `shards`, default all) not already finished in `work`; returns this run's throughput.
    With `context`, each record's instance boxes are cut from its decoded image (core.objects.crop_with_context) and
    embedded too, in batches of at most `batch_size` crops.

    Batches never straddle a shard, so a resumed shard is computed from exactly the same batches as in an
    uninterrupted build, and its vectors are bit-identical; so is a shard embedded by another rank of a
    distributed build (see builder.distributed).
    """
    ranges = shard_ranges(len(source.records), shard_size)
    wanted = range(len(ranges)) if shards is None else shards
    pending = [s for s in wanted if not (shard_dir(work, s) / "done").exists()]
    finished = len(wanted) - len(pending)
    if finished:
        log.info("resuming: %d of %d shards already embedded", finished, len(wanted))
    if not pending:
        return {"images": 0, "seconds": 0.0, "images_per_second": 0.0}
    batches = [list(range(lo, min(lo + batch_size, hi))) for s in pending
               for lo, hi in [ranges[s]] for lo in range(lo, hi, batch_size)]
    # Download what the workers will read (Hub parquet shards, or a trial's row groups) first, with its own bar and ETA;
    # only the pending shards' images, so a resumed build fetches nothing it has already embedded.
    source.fetch([i for s in pending for i in range(*ranges[s])], progress=progress)
    loader = _loader(source, encoder, batches, num_workers, context)
    total = sum(ranges[s][1] - ranges[s][0] for s in pending)
    started, done = time.perf_counter(), 0
    pending_iter = iter(pending)
    current = next(pending_iter)
    collected: list[tuple[list[Decoded], np.ndarray | None]] = []
    # A finished shard is written by a helper thread while the next one is embedded (file writes release the GIL),
    # so the accelerator does not wait on the disk; at most one write is in flight, which bounds memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer, \
            tqdm(total=total, unit="img", desc="embedding", dynamic_ncols=True, mininterval=2,
                 disable=not progress) as bar:
        writing: Future | None = None
        for items, pixels, objects in loader:
            vectors = encoder.encode_pixels(pixels) if pixels is not None else None
            collected.append((items, vectors, _encode_crops(encoder, objects, batch_size)))
            done += len(items)
            bar.update(len(items))
            if items[-1].index == ranges[current][1] - 1:  # last batch of this shard
                if writing is not None:
                    writing.result()  # raises the previous write's error here, in the embedding loop
                writing = writer.submit(_write_shard, work, current, ranges[current], collected)
                collected = []
                current = next(pending_iter, None)
        if writing is not None:
            writing.result()
    seconds = time.perf_counter() - started
    return {"images": done, "seconds": seconds, "images_per_second": done / seconds if seconds else 0.0}


def _encode_crops(encoder: Encoder, objects: dict[str, torch.Tensor] | None, batch_size: int) -> np.ndarray | None:
    """Vectors of a batch's box crops, encoded `batch_size` at a time (a COCO image has ~7 boxes)."""
    if objects is None:
        return None
    count = len(next(iter(objects.values())))
    return np.concatenate([encoder.encode_pixels({name: value[start:start + batch_size]
                                                  for name, value in objects.items()})
                           for start in range(0, count, batch_size)])


def _loader(source: Source, encoder: Encoder, batches: list[list[int]], num_workers: int,
            context: float | None = None) -> DataLoader:
    """Batches of decoded images, from `num_workers` processes that die with the builder."""
    cuda = encoder.device.type == "cuda"
    # Workers only decode (PIL + the image processor on CPU tensors) and never touch CUDA, so forking them after
    # the model is on the GPU is safe (tests/test_distributed.py checks). On CUDA, batches arrive in pinned memory
    # (pinned by the loader's thread on the current device, which distributed builds set to cuda:LOCAL_RANK) and
    # Encoder.encode_pixels copies them with non_blocking=True while the workers decode ahead. Up to
    # prefetch_factor x workers batches can wait in shared memory: 2 x 16 x 154 MB at batch 256 on a GPU (containers
    # need --shm-size or --ipc=host), 4 x 1 x 19 MB at batch 32 on a 2-core CPU.
    return DataLoader(
        DecodeDataset(source, encoder, context=context), batch_sampler=batches, num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=cuda, worker_init_fn=partial(_worker_init, os.getpid()) if num_workers else None,
        prefetch_factor=(2 if cuda else 4) if num_workers else None, persistent_workers=False,
    )


def _write_shard(work: Path, shard: int, span: tuple[int, int], collected) -> None:
    """Write vectors, thumbnails and row records of one shard (and its box crops' vectors, each row naming its record
    and box); the 'done' marker is created last."""
    final = shard_dir(work, shard)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, skipped, blocks, offset = [], [], [], 0
    objects, object_blocks = [], []
    with open(tmp / "thumbs.bin", "wb") as thumbs:
        for items, vectors, *crops in collected:
            good = iter(vectors if vectors is not None else [])
            if crops and crops[0] is not None:
                object_blocks.append(crops[0])
            for item in items:
                if item.error:
                    skipped.append([item.index, item.error])
                    continue
                objects.extend([item.index, box] for box in range(item.objects or 0))
                blocks.append(next(good))
                thumbs.write(item.thumbnail)
                rows.append([item.index, item.width, item.height, offset, len(item.thumbnail)])
                offset += len(item.thumbnail)
    assert rows or skipped, "a shard with no rows"
    vectors = np.stack(blocks).astype(np.float32) if blocks else np.zeros((0, 0), np.float32)
    np.save(tmp / "vectors.npy", vectors, allow_pickle=False)
    if object_blocks:
        np.save(tmp / "objects.npy", np.concatenate(object_blocks).astype(np.float32), allow_pickle=False)
    (tmp / "rows.json").write_text(json.dumps({"span": list(span), "rows": rows, "skipped": skipped,
                                               "objects": objects}))
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a shard directory appears whole or not at all
    if skipped:
        log.info("shard %d: %d images skipped", shard, len(skipped))


def read_shard_objects(work: Path, shard: int) -> np.ndarray | None:
    """The box crops' vectors of a shard (row i: rows.json's objects[i]), None when it has none."""
    path = shard_dir(work, shard) / "objects.npy"
    return np.load(path, allow_pickle=False) if path.exists() else None


def read_shard(work: Path, shard: int) -> tuple[np.ndarray, dict, Path]:
    folder = shard_dir(work, shard)
    return np.load(folder / "vectors.npy", allow_pickle=False), json.loads((folder / "rows.json").read_text()), \
        folder / "thumbs.bin"

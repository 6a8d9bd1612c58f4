"""The build plan: every setting a build or an --append takes from its flags, resolved once per process."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clipsearch.core.encoder import pick_device
from clipsearch.core.manifest import DEFAULT_INDEX_REPO
from clipsearch.core.objects import CONTEXT, MIN_BOX_SIDE

from .distributed import Ranks, rank_device, rank_workers
from .errors import BuildError
from .hubcoco import HubCocoSource
from .sources import CocoDirSource, ImageFolderSource, Source


@dataclass(frozen=True)
class BuildPlan:
    """What to build, from where, where to and how: the parsed flags resolved against this process's device and
    rank. Built once from the command line and the only thing the stages are given."""

    # the gallery (--images, else --coco-dir, else the two Hub repos)
    images: Path | None
    coco_dir: Path | None
    splits: tuple[str, ...]
    hf_images: str
    hf_captions: str | None  # None: no captions repo
    limit: int | None
    # the model and how it runs
    model: str
    model_revision: str | None
    device: torch.device
    precision: str  # the encoder precision asked for: the flag on CPU, fp32 (bf16 autocast) on CUDA
    batch_size: int
    shard_size: int
    workers: int
    # the output
    out: Path
    fresh: bool
    eval_mode: str  # none, val or full: 'auto' already resolved
    index_factory: str
    index_params: str
    append: bool
    base: str | None  # --base REPO[@REV] of an --append
    push_repo: str | None  # None: no --push
    visibility: str | None  # "private" or "public" when asked for; None: send none (the namespace's default holds)
    ranks: Ranks = Ranks()
    # the object index: on when the source lists instance boxes, unless --objects none
    objects: bool = True
    # the encoder's int8 serving copy beside the index (builder.serving), unless --serving-copy none
    serving_copy: bool = True
    object_context: float = CONTEXT
    object_min_side: float = MIN_BOX_SIDE

    @classmethod
    def from_args(cls, args: argparse.Namespace, ranks: Ranks | None = None) -> BuildPlan:
        ranks = ranks or Ranks()
        device = rank_device(pick_device(args.device), ranks)
        cuda = device.type == "cuda"
        batch_size = args.batch_size or (256 if cuda else 32)
        objects = getattr(args, "objects", "auto")
        context = getattr(args, "object_context", CONTEXT)
        min_side = getattr(args, "object_min_side", MIN_BOX_SIDE)
        if not 0 <= context <= 2:
            raise BuildError(f"--object-context {context}: give the context around each box as a fraction of the "
                             "box from 0 to 2 (0.25 adds a quarter of its width and height on each side).")
        if not min_side >= 1:
            raise BuildError(f"--object-min-side {min_side}: give the shortest box side to keep in pixels, 1 or "
                             "more.")
        return cls(
            images=args.images, coco_dir=args.coco_dir, limit=args.limit,
            splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
            hf_images=args.hf_images, hf_captions=args.hf_captions or None,
            model=args.model, model_revision=args.model_revision, device=device,
            precision="fp32" if cuda else args.precision, batch_size=batch_size,
            shard_size=max(batch_size, args.shard_size // batch_size * batch_size),  # whole batches per shard
            workers=args.num_workers if args.num_workers is not None else rank_workers(ranks),
            out=args.out, fresh=args.fresh, eval_mode=args.eval if args.eval != "auto" else ("full" if cuda else "val"),
            index_factory=args.index, index_params=args.index_params, append=args.append, base=args.base,
            push_repo=None if args.push is None else args.push or os.environ.get("INDEX_REPO") or DEFAULT_INDEX_REPO,
            visibility="private" if args.private else "public" if args.public else None, ranks=ranks,
            objects=objects != "none", object_context=float(context), object_min_side=float(min_side),
            serving_copy=getattr(args, "serving_copy", "int8") != "none",
        )

    def make_source(self) -> Source:
        """The gallery the flags name, listed (a Hub source lists lazily, after `limit`)."""
        if self.images:
            source = ImageFolderSource(self.images)
        elif self.coco_dir:
            source = CocoDirSource(self.coco_dir, list(self.splits))
        else:
            source = HubCocoSource(self.hf_images, self.hf_captions, list(self.splits))
        if self.limit and not self.append:
            source.limit(self.limit)  # a Hub source then lists, and later fetches, only what the first N images need
        return source

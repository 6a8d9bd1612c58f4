"""The build plan: every setting a build or an --append derives from its flags and device, computed once."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipsearch.core.encoder import pick_device
from clipsearch.core.manifest import DEFAULT_INDEX_REPO, FORMAT_VERSION

from .distributed import Ranks, rank_device, rank_workers
from .embed import THUMB_SIDE

if TYPE_CHECKING:
    from clipsearch.core.encoder import Encoder

    from .sources import Source


@dataclass(frozen=True)
class BuildPlan:
    """What to build, where and how: the parsed flags resolved against this process's device and rank."""

    out: Path
    fresh: bool
    limit: int | None
    model: str
    model_revision: str | None
    device: torch.device
    precision: str  # the encoder precision asked for: the flag on CPU, fp32 (bf16 autocast) on CUDA
    batch_size: int
    shard_size: int
    workers: int
    eval_mode: str  # none, val or full: 'auto' already resolved
    index_factory: str
    index_params: str
    push_repo: str | None  # None: no --push
    private: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, ranks: Ranks | None = None) -> BuildPlan:
        ranks = ranks or Ranks()
        device = rank_device(pick_device(args.device), ranks)
        cuda = device.type == "cuda"
        batch_size = args.batch_size or (256 if cuda else 32)
        push_repo = None if args.push is None else args.push or os.environ.get("INDEX_REPO") or DEFAULT_INDEX_REPO
        return cls(
            out=args.out, fresh=args.fresh, limit=args.limit, model=args.model, model_revision=args.model_revision,
            device=device, precision="fp32" if cuda else args.precision, batch_size=batch_size,
            shard_size=max(batch_size, args.shard_size // batch_size * batch_size),  # whole batches per shard
            workers=args.num_workers if args.num_workers is not None else rank_workers(ranks),
            eval_mode=args.eval if args.eval != "auto" else ("full" if cuda else "val"),
            index_factory=args.index, index_params=args.index_params, push_repo=push_repo, private=args.private,
        )

    def fingerprint(self, source: Source, encoder: Encoder) -> dict:
        """The resume cache's settings: everything that shapes the result (these keys let an existing .work resume)."""
        return {**source.fingerprint(), "model": encoder.info.model_id, "model_revision": encoder.info.revision,
                "batch_size": self.batch_size, "shard_size": self.shard_size, "thumb_side": THUMB_SIDE,
                "device": self.device.type, "precision": encoder.precision, "format_version": FORMAT_VERSION}

"""The encoder of a Hub model id or a local model folder: its files fetched (models.resolve_model), then loaded."""

from __future__ import annotations

import torch

from ..core.encoder import Encoder
from .models import resolve_model


def load_encoder(model_id: str, revision: str | None = None, device: str | torch.device = "auto",
                 **options) -> Encoder:
    """The encoder of a Hub model id (its files fetched first, see resolve_model) or of a local model folder;
    `options` go to Encoder.load (precision, min_cosine, batch)."""
    folder, resolved = resolve_model(model_id, revision)
    return Encoder.load(folder, resolved, device, model_id=model_id, **options)

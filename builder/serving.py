"""The build's serving copy of its encoder (clipsearch.core.serving): int8 weights the Space loads, not fp32."""

from __future__ import annotations

import logging
from pathlib import Path

from clipsearch.core.encoder import ModelInfo
from clipsearch.core.errors import EncoderError, first_line
from clipsearch.core.manifest import SERVING_MODEL, ServingInfo
from clipsearch.core.precision import MIN_CALIBRATION_COSINE, agreement, reference_vectors
from clipsearch.core.serving import save_serving_copy
from clipsearch.hub.encoders import load_encoder

log = logging.getLogger("builder")


def write_serving_copy(info: ModelInfo, folder: Path) -> ServingInfo | None:
    """Convert the build's model to int8 on the CPU as the Space would, check it against fp32 as the Space will,
    and write it to `folder`; None (the Space then converts the checkpoint itself) where that fails here."""
    try:
        # A CPU fp32 copy of exactly the build's model (its files are in the cache already): the build's own
        # encoder may be on a GPU, or in a CPU fast path, and it is the fp32 vectors the copy must reproduce.
        encoder = load_encoder(info.model_id, info.revision, "cpu", precision="fp32")
        references = reference_vectors(encoder)
        encoder.use_precision("int8")
        cosine = agreement(encoder, references)
    except (EncoderError, RuntimeError, NotImplementedError) as error:  # int8 kernels missing on this CPU build
        log.warning("no serving copy: the int8 conversion failed here (%s); the Space will convert the checkpoint",
                    first_line(error))
        return None
    if not cosine >= MIN_CALIBRATION_COSINE:
        log.warning("no serving copy: int8 agrees with fp32 only to cosine %.5f (< %g) for this model; the Space "
                    "will serve it in another precision", cosine, MIN_CALIBRATION_COSINE)
        return None
    save_serving_copy(encoder.model, folder / SERVING_MODEL, references)
    size = (folder / SERVING_MODEL).stat().st_size
    log.info("serving copy: %s, %.0f MB (int8), cosine to fp32 %.5f", SERVING_MODEL, size / 1e6, cosine)
    return ServingInfo(file=SERVING_MODEL, precision="int8", cosine=round(cosine, 6), size=size)


"""The encoder's CPU fast paths (int8, bf16): which one to compute in, decided by calibration against fp32.

int8 is torch's dynamic quantised Linear, bf16 plain bf16 weights; each is kept only if its vectors agree with fp32
on a calibration batch, and the host's CPU features pick the order they are tried in. choose_precision decides;
the encoder applies the decision (Encoder.use_precision, which converts its model with convert)."""

from __future__ import annotations

import ctypes
import gc
import logging
import time
import warnings
from collections.abc import Collection

import numpy as np
import torch
from PIL import Image

from .errors import first_line

log = logging.getLogger(__name__)

# Inference precisions on CPU (their names: manifest.PRECISIONS). fp32 is the reference (the builder's default: index
# vectors are made with it); bf16 weights are fast only where the CPU has bf16 instructions; int8 is torch's dynamic
# quantisation of every nn.Linear (weights int8 per output channel, activations quantised per call; the token table
# kept in fp16), fast on any x86 with AVX2, best with AVX512-VNNI. "auto" tries them in the order auto_precisions()
# gives for the host.

# A fast path is kept only if it agrees with fp32 at least this well on the calibration batch (cosine, worst row).
MIN_CALIBRATION_COSINE = 0.99
# The builder's stricter gate: index vectors outlive the query path, so a fast path must agree with fp32 tenfold closer.
BUILD_MIN_COSINE = 0.999
CALIBRATION_TEXTS = (
    "a photo of a dog catching a frisbee in a park",
    "a red double-decker bus on a city street",
    "two giraffes standing next to each other",
    "a plate of pasta with broccoli",
)


def choose_precision(encoder, requested: str, min_cosine: float, batch: int | None = None) -> str:
    """The precision an fp32 CPU encoder should compute in: the first fast path (for "auto", in auto_precisions'
    order) whose vectors stay within `min_cosine` of fp32 (worst row of the calibration batch), else "fp32". Given
    a `batch` on an AMX host, auto times every candidate that passes on passes of `batch` images (1: a text and an
    image query) and returns the fastest. Each candidate is tried on the encoder itself (encoder.use_precision), so
    the caller then applies the one returned."""
    candidates = [requested] if requested != "auto" else auto_precisions()
    race = requested == "auto" and batch is not None and "amx_bf16" in cpu_flags()
    texts = list(CALIBRATION_TEXTS) if encoder.info.has_text else []
    images = calibration_images(encoder.info.image_size)
    reference = reference_vectors(encoder)
    passed: list[tuple[float, str, float]] = []  # (seconds per query, candidate, cosine)
    for candidate in candidates:
        cosine = _calibrate(encoder, candidate, reference)
        if cosine is not None and cosine >= min_cosine:
            if not race:
                log.info("precision %s: calibration cosine to fp32 %.5f", candidate, cosine)
                release_freed_memory()  # what the calibration passes allocated
                return candidate
            passed.append((pass_seconds(encoder, texts[:1], images, batch), candidate, cosine))
            log.info("candidate %s: calibration cosine to fp32 %.5f, %.1f ms a pass of %d", candidate, cosine,
                     passed[-1][0] * 1000, batch)
        elif cosine is not None:
            log.warning("precision %s rejected: calibration cosine to fp32 %.5f < %g", candidate, cosine,
                        min_cosine)
    if passed:
        seconds, best, cosine = min(passed)
        log.info("precision %s: calibration cosine to fp32 %.5f, the fastest here (%s)", best, cosine,
                 ", ".join(f"{name} {s * 1000:.1f} ms" for s, name, _ in sorted(passed)))
        release_freed_memory()
        return best
    log.warning("no fast path kept (asked for %s); serving in fp32", requested)
    return "fp32"


def reference_vectors(encoder, kinds: Collection[str] = ("images", "texts")) -> dict[str, np.ndarray]:
    """The encoder's vectors of the calibration batch: "images", and "texts" for a model that reads text (of those
    in `kinds`)."""
    vectors = {}
    if "images" in kinds:
        vectors["images"] = encoder.encode_images(calibration_images(encoder.info.image_size))
    if "texts" in kinds and encoder.info.has_text:
        vectors["texts"] = encoder.encode_texts(list(CALIBRATION_TEXTS))
    return vectors


def agreement(encoder, references: dict[str, np.ndarray], kinds: Collection[str] = ("images", "texts")) -> float:
    """The worst cosine between the encoder's vectors of the calibration batch (of `kinds`) and `references`
    (fp32's)."""
    mine = reference_vectors(encoder, kinds)
    if set(mine) != {kind for kind in references if kind in kinds}:
        return float("-inf")  # another model's vectors
    return min(worst_cosine(mine[kind], references[kind]) for kind in mine)


def worst_cosine(vectors: np.ndarray, references: np.ndarray) -> float:
    """The lowest cosine between matching rows of two sets of unit vectors; -inf for sets of different shapes (another
    model's vectors, or another batch)."""
    if vectors.shape != references.shape:
        return float("-inf")
    return float(np.min(np.sum(vectors * references, axis=1)))


def _calibrate(encoder, candidate: str, reference: dict[str, np.ndarray]) -> float | None:
    """Switch the encoder to `candidate`; its worst calibration cosine to fp32, None where it cannot run."""
    try:
        encoder.use_precision(candidate)
        return agreement(encoder, reference)
    except (RuntimeError, NotImplementedError, AssertionError) as error:  # kernel missing on this build
        log.warning("precision %s unavailable here (%s)", candidate, first_line(error))
        return None


def pass_seconds(encoder, texts: list[str], images: list, batch: int, repeats: int = 3) -> float:
    """One pass as the encoder will run: a text and an image query (batch 1, the app), or `batch` images (the
    builder); the best of `repeats` (the least disturbed)."""
    images = (images * batch)[:batch]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        if batch == 1 and texts:
            encoder.encode_texts(texts)
        encoder.encode_images(images)
        timings.append(time.perf_counter() - started)
    return min(timings)


def convert(model: torch.nn.Module, precision: str) -> torch.dtype:
    """Turn an fp32 model into `precision` ("bf16" or "int8") in place; returns the dtype its pixel inputs take."""
    if precision == "bf16":
        model.to(torch.bfloat16)
        release_freed_memory()
        return torch.bfloat16
    # The weights point into the memory-mapped checkpoint; the tensors int8 keeps in fp32 (embeddings, norms, biases)
    # would hold the whole map resident. Own copies of those first (the Linear weights are replaced anyway).
    replaced = {id(module.weight) for module in model.modules() if type(module) is torch.nn.Linear}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in replaced:
            tensor.data = tensor.data.clone()
    full_range = full_range_activations()
    with warnings.catch_warnings():  # torch's notice that its quantised tensors move to torchao; they work
        warnings.simplefilter("ignore")
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear and name not in KEEP_FLOAT:
                    setattr(parent, name, Int8Linear.from_linear(child, full_range))
                elif type(child) is torch.nn.Embedding and child.weight.numel() >= VOCABULARY_TABLE:
                    setattr(parent, name, HalfEmbedding(child.weight, child.padding_idx))
    release_freed_memory()
    return torch.float32


# Linears whose weight the model's own code reads (SigLIP 2 NaFlex: `self.patch_embedding.weight.dtype`, in
# transformers 5.23), which a quantised module has only as a method; one 768 x 768 layer, a per-cent of the tower.
KEEP_FLOAT = {"patch_embedding"}
VOCABULARY_TABLE = 2**20  # embedding tables at least this big (token vocabularies: CLIP's is 49408 x 512) go fp16


class HalfEmbedding(torch.nn.Module):
    """A token table kept in fp16 and looked up in fp32: CLIP's 101 MB table becomes 50 MB; a row is read per
    token, so the lookup costs nothing, and fp16 keeps 11 significant bits of values this small."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.padding_idx = padding_idx
        self.register_buffer("weight", weight.detach().to(torch.float16))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.weight).float()


class Int8Linear(torch.ao.nn.quantized.dynamic.Linear):
    """torch's dynamic int8 Linear (weights int8 per output channel, activations quantised per call), built
    directly from an nn.Linear: the same result as torch.ao.quantization.quantize_dynamic with
    per_channel_dynamic_qconfig, in a third of the time (no observers, and one weight packing instead of three).

    With `full_range`, activations use all 8 bits: torch keeps them to 7 so that AVX2's 16-bit pairwise sums cannot
    saturate, but VNNI sums in 32 bits, so the 8th bit is free accuracy (ViT-B/32 calibration cosine 0.9976 ->
    0.9994; on the tests' shapes model the worst query-to-gallery score error drops from 0.033 to 0.012)."""

    full_range = False

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, full_range: bool) -> Int8Linear:
        weight = linear.weight.detach().float()
        # symmetric per-channel int8, as PerChannelMinMaxObserver(qint8, per_channel_symmetric) computes it
        scale = (weight.abs().amax(dim=1) / 127.5).clamp_min(torch.finfo(torch.float32).eps).double()
        bias = None if linear.bias is None else linear.bias.detach().float().clone()  # own copy: not the checkpoint map
        return cls.from_quantized(torch.quantize_per_channel(weight, scale, torch.zeros(len(scale), dtype=torch.long),
                                                             0, torch.qint8), bias, full_range)

    @classmethod
    def from_quantized(cls, qweight: torch.Tensor, bias: torch.Tensor | None, full_range: bool) -> Int8Linear:
        """The module of an int8 weight (per output channel) and its fp32 bias: from_linear, or a serving copy."""
        module = cls(1, 1)  # a placeholder size: the constructor would otherwise pack a full-size zero weight
        module.out_features, module.in_features = qweight.shape
        module.full_range = full_range
        module.set_weight_bias(qweight, bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=not self.full_range).to(x.dtype)


def full_range_activations() -> bool:
    """VNNI sums u8 x s8 products in 32 bits; without it (AVX2) torch's 7-bit activations avoid saturation."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def cpu_flags() -> set[str]:
    """The CPU feature flags of this host (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def auto_precisions() -> list[str]:
    """Fast paths for precision="auto", in the order they are tried, for this host. Measured on a 2-core AMD EPYC
    with AVX512-BF16 (no AMX), ViT-B/32, one query: int8 beats bf16 on both towers (text ~16 vs ~23 ms, image ~67
    vs ~118 ms on one busy core; fp32 58 / 201), so int8 is tried first there."""
    if "amx_bf16" in cpu_flags():  # AMX: the faster depends on the model (CLIP B/32 int8, SigLIP B/16 image bf16;
        return ["bf16", "int8"]  # benchmarks/results/frontier.md), so choose_precision times both and keeps the faster
    return ["int8", "bf16"] if cpu_has_bf16() else ["int8"]


def calibration_images(size: int) -> list[Image.Image]:
    """Two deterministic pictures (a smooth gradient and coloured blocks) for the precision check."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradient = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))],
                        axis=-1)
    blocks = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).repeat(size // 8 + 1, 0).repeat(size // 8 + 1, 1)
    return [Image.fromarray(gradient.astype(np.uint8)), Image.fromarray(blocks[:size, :size].astype(np.uint8))]


def release_freed_memory() -> None:
    """Hand the replaced fp32 weights back to the OS (glibc keeps freed heap otherwise): resident memory counts."""

    gc.collect()  # replaced modules can sit in reference cycles
    try:

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

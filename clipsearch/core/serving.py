"""The encoder's serving copy: its int8 weights saved beside the index, so the app never fetches the fp32 checkpoint.

A build writes the model exactly as the app's int8 fast path converts it (precision.convert): every Linear as int8
per output channel with its scales, the token table in fp16, everything else as it is; plus the fp32 vectors of
the precision check's texts and pictures. The app rebuilds the model's modules without allocating weights (meta
device), puts these tensors in place, and keeps the copy only if its vectors agree with those fp32 vectors as well
as a conversion made on the spot must (precision.MIN_CALIBRATION_COSINE). SigLIP 2 B/16: 1.5 GB of fp32 weights
become ~0.57 GB to download, and no conversion runs at start-up."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoModel

from .errors import EncoderError, first_line
from .precision import HalfEmbedding, Int8Linear, full_range_activations, release_freed_memory

FORMAT = "clipsearch-int8/1"  # the file's metadata names its layout; another layout is refused with a sentence
INT8, SCALES = ".int8", ".scales"  # a quantised Linear's weight: int8 values and float64 scales per output channel
REFERENCE = "__reference__."  # the fp32 vectors the copy must reproduce: REFERENCE + "texts" / "images"


def save_serving_copy(model: torch.nn.Module, path: Path, references: dict[str, np.ndarray]) -> None:
    """Write an int8-converted `model` (precision.convert) and the fp32 `references` ({"texts", "images"}: the
    vectors of precision.CALIBRATION_TEXTS and calibration_images) to `path` (safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    quantised = set()
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            weight, bias = module.weight(), module.bias()
            tensors[f"{name}.weight{INT8}"] = weight.int_repr().contiguous()
            tensors[f"{name}.weight{SCALES}"] = weight.q_per_channel_scales().double().contiguous()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().contiguous()
            quantised.add(name)
    for name, tensor in _tensors(model):
        if name.rpartition(".")[0] not in quantised:
            tensors[name] = tensor.detach().contiguous()  # position ids are expanded views: contiguous to be saved
    for kind, vectors in references.items():
        tensors[REFERENCE + kind] = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    save_file(tensors, str(path), metadata={"format": FORMAT})


def load_serving_copy(config, path: Path) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The model of `config` with the serving copy's weights (in eval mode), and its fp32 reference vectors. A file
    of another layout, or one that lacks a tensor the model has, raises EncoderError with a sentence."""
    try:
        tensors = _read(path)
    except (SafetensorError, OSError) as error:
        raise EncoderError(f"{path.name} cannot be read as a serving copy ({first_line(error)}).") from None
    with torch.device("meta"):  # modules only: every weight comes from the file
        model = AutoModel.from_config(config)
    _put_fast_modules(model, tensors)
    for name, tensor in _tensors(model):
        if tensor.device.type != "meta":
            continue
        if name not in tensors:
            raise EncoderError(f"{path.name} lacks the weight {name} of {type(model).__name__}: it was written for "
                               "another model; rebuild the index (python -m builder.build) to write it again.")
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(tensors[name], requires_grad=False)
        else:
            module._buffers[leaf] = tensors[name]
    references = {name[len(REFERENCE):]: tensor.numpy() for name, tensor in tensors.items()
                  if name.startswith(REFERENCE)}
    del tensors
    release_freed_memory()  # the file's int8 arrays, now packed into the modules' own layout
    return model.eval(), references


def _read(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors: own copies, except the fp16 token tables, which stay memory-mapped through a mapping of
    their own. safetensors maps the file and keeps the map while any tensor from it lives, so pages read through it
    count as the app's memory: reading the int8 weights through the table's map would keep ~0.17 GB resident, and
    this way the 0.39 GB table (SigLIP 2's) costs only the rows queries read."""
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("format") != FORMAT:
            raise EncoderError(f"{path.name} is not a serving copy this app can load (format "
                               f"{(handle.metadata() or {}).get('format')!r}, expected {FORMAT}).")
        names = list(handle.keys())
        tables = {name for name in names if handle.get_slice(name).get_dtype() == "F16"}
        tensors = {name: handle.get_tensor(name).clone() for name in names if name not in tables}
    with safe_open(str(path), framework="pt") as handle:
        tensors.update({name: handle.get_tensor(name) for name in tables})
    return tensors


def _tensors(model: torch.nn.Module):
    """Every parameter and buffer by its full name, tied ones under each of their names."""
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _put_fast_modules(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the (still empty) Linears and token tables the file holds in int8 / fp16 by modules made from those
    tensors, taking them out of `tensors`."""
    full_range = full_range_activations()
    with warnings.catch_warnings():  # torch's notice that its quantised tensors move to torchao; they work
        warnings.simplefilter("ignore")
        for prefix, parent in list(model.named_modules()):
            for name, child in list(parent.named_children()):
                weight = f"{prefix}.{name}.weight" if prefix else f"{name}.weight"
                if type(child) is torch.nn.Linear and weight + INT8 in tensors:
                    values, scales = tensors.pop(weight + INT8), tensors.pop(weight + SCALES)
                    # The quantised tensor made from its int8 values and scales as they are (torch 2.13's
                    # constructor behind quantize_per_channel): dequantising and quantising again cost ~2 s of a
                    # start on 2 cores.
                    qweight = torch._make_per_channel_quantized_tensor(values, scales,
                                                                       torch.zeros(len(scales), dtype=torch.long), 0)
                    bias = tensors.pop(weight[:-len("weight")] + "bias", None)
                    setattr(parent, name, Int8Linear.from_quantized(qweight, bias, full_range))
                elif type(child) is torch.nn.Embedding and weight in tensors and \
                        tensors[weight].dtype == torch.float16:
                    setattr(parent, name, HalfEmbedding(tensors.pop(weight), child.padding_idx))


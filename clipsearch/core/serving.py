"""The encoder's serving copy: its int8 weights saved beside the index, so the app never fetches the fp32 checkpoint.

A build writes the model exactly as the app's int8 fast path converts it (precision.convert): every Linear as int8
per output channel with its scales, the token table in fp16, everything else as it is; plus the fp32 vectors of
the precision check's texts and pictures. The app rebuilds the model's modules without allocating weights (meta
device), puts these tensors in place, and keeps the copy only if its vectors agree with those fp32 vectors as well
as a conversion made on the spot must (precision.MIN_CALIBRATION_COSINE). SigLIP 2 B/16: 1.5 GB of fp32 weights
become ~0.57 GB to download, and no conversion runs at start-up.

The torch towers that the build's ONNX graphs replace (core.tower_graphs) are written to files of their own, so the
app downloads them only where a graph cannot serve on its CPU: SigLIP 2 B/16's main file is then its 0.39 GB fp16
token table and little else (decision 0047)."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
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
# The modules of each torch tower a graph can replace (CLIP's and SigLIP's names; SigLIP's image head is inside
# vision_model, and its text tower's token embeddings stay with the main file: they feed the text graph).
TOWER_MODULES = {"image": ("vision_model", "visual_projection"),
                 "text": ("text_model.encoder", "text_model.final_layer_norm", "text_model.head")}


def save_serving_copy(model: torch.nn.Module, path: Path, references: dict[str, np.ndarray],
                      apart: Mapping[str, Path] | None = None) -> None:
    """Write an int8-converted `model` (precision.convert) and the fp32 `references` ({"texts", "images"}: the
    vectors of precision.CALIBRATION_TEXTS and calibration_images) to `path` (safetensors); the towers named in
    `apart` ({"image" | "text": file}, see TOWER_MODULES) each to a file of their own instead."""
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
    files: dict[Path, dict[str, torch.Tensor]] = {Path(path): {}, **{Path(file): {} for file in (apart or {}).values()}}
    for name, tensor in tensors.items():
        kind = next((kind for kind in apart or {} if _in_tower(name, kind)), None)
        files[Path(apart[kind]) if kind else Path(path)][name] = tensor
    for kind, vectors in references.items():
        files[Path(path)][REFERENCE + kind] = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    for file, part in files.items():
        save_file(part, str(file), metadata={"format": FORMAT})


def load_serving_copy(config, path: Path, towers: Collection[Path] = (),
                      without: Collection[str] = ()) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The model of `config` with the serving copy's weights (in eval mode), and its fp32 reference vectors: `path`
    and the `towers` kept apart from it, but the towers named in `without` ("image" / "text"), whose modules are
    ReleasedTower stand-ins (their graphs do their work). A file of another layout, or one that lacks a tensor the
    model has, raises EncoderError with a sentence."""
    tensors: dict[str, torch.Tensor] = {}
    for file in (path, *towers):
        try:
            tensors.update(_read(file))
        except (SafetensorError, OSError) as error:
            raise EncoderError(f"{file.name} cannot be read as a serving copy ({first_line(error)}).") from None
    with torch.device("meta"):  # modules only: every weight comes from the file
        model = AutoModel.from_config(config)
    for kind in without:
        _stand_in(model, kind)
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


def release_tower(model: torch.nn.Module, kind: str) -> None:
    """Put ReleasedTower stand-ins in place of the `kind` tower's modules (TOWER_MODULES), whose memory then goes;
    a tower never loaded (load_serving_copy's `without`) costs nothing."""
    if _stand_in(model, kind):
        release_freed_memory()


def _stand_in(model: torch.nn.Module, kind: str) -> bool:
    """Replace the `kind` tower's modules that `model` has and holds (not stand-ins already) by ReleasedTower
    stand-ins; whether any was replaced."""
    names = [name for name in TOWER_MODULES[kind]
             if _has_module(model, name) and not isinstance(model.get_submodule(name), ReleasedTower)]
    for name in names:
        _set_module(model, name, ReleasedTower(kind))
    return bool(names)


class ReleasedTower(torch.nn.Module):
    """Stands in for a tower whose work its graph does."""

    def __init__(self, kind: str = "image"):
        super().__init__()
        self.kind = kind

    def forward(self, *args, **kwargs):
        raise EncoderError(f"the torch {self.kind} tower was released: {self.kind}s go through the {self.kind} graph")


def has_tower(model: torch.nn.Module, kind: str) -> bool:
    """Whether `model` has the `kind` tower's modules (TOWER_MODULES): paired CLIP and SigLIP models do, image-only
    backbones (DINOv2, ViT, ResNet) have nothing to keep apart."""
    return any(_has_module(model, name) for name in TOWER_MODULES[kind])


def _in_tower(name: str, kind: str) -> bool:
    return any(name == module or name.startswith(module + ".") for module in TOWER_MODULES[kind])


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        return isinstance(model.get_submodule(name), torch.nn.Module)
    except AttributeError:
        return False


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, module)


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


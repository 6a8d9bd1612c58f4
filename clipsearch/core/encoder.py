"""The one encoder both the builder and the app use: model loading, preprocessing, dtype, L2 norm.

CLIP-family checkpoints (CLIP, SigLIP: paired text and image towers) embed both; image-only backbones (DINOv2, ViT,
ResNet, ... through the Auto classes) embed images only, for galleries where visual similarity matters most."""

from __future__ import annotations

import contextlib
import json
import logging
import string
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

from .errors import EncoderError, first_line
from .manifest import PRECISIONS
from .precision import (
    CALIBRATION_TEXTS,
    MIN_CALIBRATION_COSINE,
    agreement,
    calibration_images,
    choose_precision,
    convert,
    worst_cosine,
)
from .serving import load_serving_copy, release_tower
from .tower_graphs import TowerGraph

log = logging.getLogger(__name__)

# SigLIP 2 B/16 at 224 px: 52.1 T->I R@1 on COCO Karpathy 5k (big_vision), multilingual (Gemma tokenizer, 256k
# pieces); at 256 px (53.2) a picture query costs ~30% more, which missed the 200 ms picture goal on an AVX-512 CPU
# without AMX (decision 0051). The light alternative: laion's English CLIP B/32 (39.3), a third of the CPU time.
DEFAULT_MODEL = "google/siglip2-base-patch16-224"
LIGHT_MODEL = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
# Tokenizers of multilingual families: the UI then says that any language works (SigLIP 2's Gemma vocabulary).
MULTILINGUAL_TOKENIZERS = {"GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer"}
# Families whose text goes through big_vision's reference pipeline, which the encoder follows itself instead of
# trusting each repo's tokenizer config (see reference_ids): SigLIP and SigLIP 2 pool the last of a fixed number of
# positions, so padding side, an attention mask or a BOS token change every text vector.
REFERENCE_TEXT = {"siglip", "siglip2"}
# big_vision lowercases with tf.strings.lower, whose default encoding lowercases ASCII only: "КРАСНЫЙ" and "Ärger"
# reach the tokenizer as typed. (SiglipTokenizer, SigLIP 1's English model, also lowercases by itself.)
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Packages a tokenizer class may need beyond transformers, as named in its import errors (lowercase match).
TOKENIZER_PACKAGES = ("sentencepiece", "protobuf", "tiktoken")


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the encoder exactly: recorded in the manifest, loaded again by the app."""

    model_id: str
    revision: str | None
    architecture: str
    model_type: str
    dim: int
    image_size: int
    text_max_length: int
    preprocess: dict = field(default_factory=dict)
    # False for image-only backbones: the index then has no text side (the app hides text search and says why).
    has_text: bool = True
    # How an image becomes one vector: "projection" (the CLIP family's own image features), "cls" (the class token
    # of the last layer: ViT, DINOv2), "pooler" (the model's pooled output: global average pooling in ResNet,
    # ConvNeXt, Swin) or "mean" (mean of the last hidden states, where a model has neither).
    pooling: str = "projection"
    # The text side reads many languages (its tokenizer covers them): the UI invites queries in any language.
    multilingual: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is an error, not a silent fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise EncoderError("--device cuda: no CUDA GPU is available here; use --device cpu or auto.")
    if requested not in ("cpu", "cuda"):
        raise EncoderError(f"--device {requested}: choose auto, cpu or cuda.")
    return torch.device(requested)


class Encoder:
    """Preprocess + model + L2 normalisation; vectors from here are what the index stores and queries use."""

    def __init__(self, model, image_processor, tokenizer, info: ModelInfo, device: torch.device,
                 precision: str = "fp32", reload_fp32=None):
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        # What the model computes in: fp32 | bf16 | int8 on CPU, bf16-autocast on CUDA. Not part of ModelInfo:
        # the manifest identifies the model, and query vectors from any precision used here match it (checked).
        self.precision = precision
        self._input_dtype = torch.float32
        self._reload_fp32 = reload_fp32  # fresh fp32 weights: every CPU fast path is converted from fp32
        self.image_graph: TowerGraph | None = None  # the build's ONNX image tower, where the app runs it instead
        self.text_graph: TowerGraph | None = None  # likewise its text tower (SigLIP family)
        self._tower_released = False  # see release_image_tower

    @classmethod
    def load(cls, folder: str | Path, revision: str | None = None, device: str | torch.device = "auto",
             precision: str = "fp32", min_cosine: float = MIN_CALIBRATION_COSINE, batch: int | None = None, *,
             model_id: str | None = None, serving_copy: Path | None = None, tower_files: Collection[Path] = (),
             without: Collection[str] = ()) -> Encoder:
        """Load the model saved in the local `folder` for `device`. A Hub model's files are fetched first (see
        clipsearch.hub.models.load_encoder) and ModelInfo records it as `model_id` at `revision`, the commit they
        came from; a local model is recorded by its folder.

        `precision` (CPU only): "fp32" (default, the builder's reference), "bf16", "int8", or "auto" (the app: the
        fastest fast path for this host first, see auto_precisions). A fast path is kept only if its embeddings
        agree with fp32 (cosine >= min_cosine, worst row, on a fixed calibration batch of texts and images);
        otherwise the next one is tried, then fp32, and the log says why. Given `batch` where auto has a real
        choice (AMX), the faster on passes of `batch` images is kept (the app passes 1: one query at a time).
        `encoder.precision` tells what was kept.

        `serving_copy` (the app, where the build published one: core.serving): int8 weights loaded from that file
        instead of converting the checkpoint, which `folder` then need not hold (its configs and processor files
        suffice). They are kept only if their vectors agree with the build's fp32 vectors as a conversion made here
        must (min_cosine); otherwise EncoderError, and the caller loads the checkpoint instead. The towers the build
        kept apart from it come from `tower_files`, but those named in `without` ("image" / "text"), which are not
        loaded at all: their graphs must do their work (use_image_graph, use_text_graph), and only the towers that
        are loaded are checked here."""

        folder = Path(folder).expanduser()
        name = model_id or str(folder)  # as the user named it, in every sentence
        if precision not in PRECISIONS:
            raise EncoderError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
        if not folder.is_dir():
            raise EncoderError(f"--model {name}: no such folder. Pass an existing model folder (a Hub model's files "
                               "are fetched first: clipsearch.hub.models.load_encoder).")
        torch_device = device if isinstance(device, torch.device) else pick_device(device)
        if torch_device.type != "cpu" and (precision in ("bf16", "int8") or serving_copy):
            raise EncoderError(f"precision {precision}: the fast paths are for CPU inference; on {torch_device.type} "
                               "the encoder uses bf16 autocast (use precision auto or fp32).")
        config, model, paired, references = _model(folder, name, serving_copy, tower_files, without)
        image_processor, tokenizer = _processors(folder, name, paired)
        model.eval().to(torch_device)
        info = _model_info(name if revision else str(folder), revision, config, model, image_processor, tokenizer)
        encoder = cls(model, image_processor, tokenizer, info, torch_device,
                      "bf16-autocast" if torch_device.type == "cuda" else "int8" if serving_copy else "fp32",
                      None if serving_copy else
                      lambda: AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval())
        encoder._tower_released = bool(without)
        if serving_copy is not None:
            encoder._check_serving_copy(serving_copy.name, references, min_cosine, without)
        elif torch_device.type == "cpu" and precision != "fp32":
            encoder.use_precision(choose_precision(encoder, precision, min_cosine, batch))
        log.info("loaded %s (%s, dim %d) on %s, precision %s", info.model_id, info.architecture, info.dim,
                 torch_device, encoder.precision)
        return encoder

    def _check_serving_copy(self, name: str, references: dict[str, np.ndarray], min_cosine: float,
                            without: Collection[str]) -> None:
        """EncoderError unless the towers loaded from the serving copy `name` reproduce the build's fp32 vectors
        (`references`); the towers left out (`without`) are checked by their graphs instead."""
        kinds = [vectors for tower, vectors in (("image", "images"), ("text", "texts"))
                 if tower not in without and (tower == "image" or self.info.has_text)]
        if not kinds:
            log.info("loaded %s from its serving copy (int8) without its torch towers: graphs embed both",
                     self.info.model_id)
            return
        cosine = agreement(self, references, kinds)
        if not cosine >= min_cosine:
            raise EncoderError(f"the serving copy {name} agrees with the build's fp32 vectors only to cosine "
                               f"{cosine:.5f} (< {min_cosine:g}) on this CPU")
        log.info("loaded %s from its serving copy (int8), cosine to the build's fp32 vectors %.5f (%s)",
                 self.info.model_id, cosine, " and ".join(kinds))

    def use_precision(self, precision: str) -> None:
        """Compute in `precision` (on CPU: fp32, bf16 or int8) from now on. A model in another fast path, or with a
        tower released, is reloaded in fp32 first: each fast path is converted from the fp32 weights."""
        self.image_graph = self.text_graph = None  # pictures and texts too are computed in `precision`
        if precision == self.precision and not self._tower_released:
            return
        if self._reload_fp32 is None:
            raise EncoderError(f"precision {precision}: this encoder was loaded from a serving copy (int8), which "
                               "cannot be converted; set CLIPSEARCH_PRECISION to load the full checkpoint.")
        if self.precision != "fp32" or self._tower_released:
            self._tower_released = False
            self.model, self.precision, self._input_dtype = self._reload_fp32(), "fp32", torch.float32
        if precision != "fp32":
            self.precision = precision  # before converting: a conversion that fails half-way is reloaded next time
            self._input_dtype = convert(self.model, precision)

    # --- images -------------------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """What the model takes for these images; safe in DataLoader worker processes (no model involved)."""
        return image_inputs(self.image_processor, images)

    @torch.inference_mode()
    def encode_pixels(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """Vectors for preprocessed images (preprocess()'s dict, batched)."""
        if self.image_graph is not None:
            return _normalise(torch.from_numpy(self.image_graph(inputs["pixel_values"].numpy())))
        inputs = {name: value.to(self.device, dtype=self._input_dtype if name == "pixel_values" else None,
                                 non_blocking=True) for name, value in inputs.items()}
        with self._autocast():
            return _normalise(self.image_features(inputs))

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image tower's output for model inputs, before normalisation (what core.tower_graphs exports)."""
        if self.info.has_text:
            return self.model.get_image_features(**inputs).pooler_output
        return _pool(self.model(**inputs), self.info.pooling)

    def use_image_graph(self, path: Path) -> float:
        """Embed pictures with the build's ONNX image graph (core.tower_graphs) from now on, if its vectors agree with
        the build's fp32 vectors as any fast path must (returns that worst cosine); EncoderError with a sentence
        otherwise (torch keeps them)."""
        pixels = self.preprocess(calibration_images(self.info.image_size))["pixel_values"].numpy()
        self.image_graph, cosine = _checked_graph(path, "image", "pictures", pixels)
        return cosine

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.preprocess(images))

    def release_image_tower(self) -> None:
        """Free the torch image tower of a paired model once its image graph embeds the pictures (the app: ~0.1 GB
        resident for SigLIP 2 B/16). Calling it afterwards is a bug, said so; use_precision reloads it."""
        if self.image_graph is None or not self.info.has_text:
            return
        release_tower(self.model, "image")
        self._tower_released = True

    def release_text_tower(self) -> None:
        """Free the torch text tower after its token embeddings once the text graph embeds the texts (the app:
        ~0.1 GB resident for SigLIP 2 B/16); use_precision reloads it."""
        if self.text_graph is None:
            return
        release_tower(self.model, "text")
        self._tower_released = True

    # --- text ---------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if not self.info.has_text:
            raise EncoderError(f"{self.info.model_id} is an image-only model ({self.info.architecture}): it cannot "
                               "embed text. Build with a CLIP-family --model for text search.")
        if self.info.model_type in REFERENCE_TEXT:
            return {"input_ids": reference_ids(self.tokenizer, texts, self.info.text_max_length)}
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.info.text_max_length, return_tensors="pt"
        )

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if self.text_graph is not None:
            return _normalise(torch.from_numpy(self.text_graph(self.text_embeddings(texts).numpy())))
        tokens = {name: value.to(self.device) for name, value in self.tokenize(texts).items()}
        with self._autocast():
            features = self.model.get_text_features(**tokens).pooler_output
        return _normalise(features)

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """The SigLIP text model's token and position embeddings of `texts` (fp32, on the CPU): what the text graph
        takes (core.tower_graphs)."""
        return self.model.text_model.embeddings(input_ids=self.tokenize(texts)["input_ids"]).float()

    def use_text_graph(self, path: Path) -> float:
        """Embed texts with the build's ONNX text graph (core.tower_graphs) from now on, if its vectors agree with
        the build's fp32 vectors as any fast path must (returns that worst cosine); EncoderError with a sentence
        otherwise (torch keeps them)."""
        embeddings = self.text_embeddings(list(CALIBRATION_TEXTS)).numpy()
        self.text_graph, cosine = _checked_graph(path, "text", "texts", embeddings)
        return cosine

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _config(folder: Path, name: str):
    """(config, paired) of a model folder: paired text and image towers, or an image-only backbone."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise EncoderError(f"--model {name}: not a transformers model folder ({first_line(error)}).") from None
    return config, hasattr(config, "text_config") and hasattr(config, "vision_config")


def _model(folder: Path, name: str, serving_copy: Path | None = None, tower_files: Collection[Path] = (),
           without: Collection[str] = ()):
    """(config, model, paired, reference vectors) of a model folder: its checkpoint, or given a build's
    `serving_copy` (core.serving) its configs with those int8 weights (and its `tower_files`, but the towers named in
    `without`) and the fp32 vectors they must reproduce."""
    config, paired = _config(folder, name)
    references = None
    try:
        if serving_copy is None:
            model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        else:
            model, references = load_serving_copy(config, serving_copy, tower_files, without)
    except (OSError, ValueError, KeyError) as error:
        raise EncoderError(f"--model {name}: could not be loaded ({first_line(error)}).") from None
    if paired and not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
        raise EncoderError(
            f"--model {name}: {type(model).__name__} cannot embed both text and images; "
            "pass a CLIP-family checkpoint such as CLIP, SigLIP or SigLIP 2."
        )
    if not paired and getattr(model, "main_input_name", None) != "pixel_values":
        raise EncoderError(
            f"--model {name}: a '{config.model_type}' model does not take images; pass a CLIP-family "
            "checkpoint (CLIP, SigLIP: text and image search) or an image model such as DINOv2, ViT or ResNet "
            "(image search only)."
        )
    return config, model, paired, references


def _processors(folder: Path, name: str, paired: bool):
    """(image processor, tokenizer or None) of a model folder."""

    try:
        # The PIL backend everywhere: torchvision's resize differs slightly, and index vectors and query vectors
        # must come from identical pixels whichever host runs the code.
        image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    except (OSError, ValueError, KeyError) as error:
        raise EncoderError(f"--model {name}: it has no usable image processor (preprocessor_config.json: "
                           f"{first_line(error)}); save the model's image processor beside it.") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder) if paired else None
        if tokenizer is not None:
            drop_construction_tables(tokenizer)
    except (ImportError, OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise EncoderError(_tokenizer_problem(name, folder, error)) from None
    return image_processor, tokenizer


# transformers 5.23's tokenizers-backed classes (GemmaTokenizer: SigLIP 2) keep the vocabulary dict and merges list
# they built their Rust tokenizer from; nothing reads them afterwards (get_vocab asks the Rust tokenizer). For a
# 256k vocabulary they hold ~120 MB of the app's memory (benchmarks/results/tokenizer_memory.md).
CONSTRUCTION_TABLES = ("_vocab", "_merges")


def drop_construction_tables(tokenizer) -> None:
    """Free the construction tables a tokenizer keeps (CONSTRUCTION_TABLES), where it tokenizes the calibration
    texts to the same ids without them; otherwise they are put back, so a release that reads them still works."""
    kept = {name: table for name in CONSTRUCTION_TABLES
            if isinstance(table := getattr(tokenizer, name, None), (dict, list)) and table}
    if not kept:
        return
    before = tokenizer(list(CALIBRATION_TEXTS))["input_ids"]
    for name in kept:
        setattr(tokenizer, name, None)
    try:
        same = tokenizer(list(CALIBRATION_TEXTS))["input_ids"] == before
    except Exception:  # noqa: BLE001 - a tokenizer that reads them: they stay
        same = False
    if not same:
        for name, table in kept.items():
            setattr(tokenizer, name, table)


def _model_info(model_id: str, revision: str | None, config, model, image_processor, tokenizer) -> ModelInfo:
    """What identifies the loaded encoder: the manifest records it, the app loads it again by it."""
    paired = tokenizer is not None  # _processors loads a tokenizer exactly for paired models
    image_size = _image_size(image_processor, config)
    pooling, vision_dim = ("projection", 0) if paired else _vision_head(model, image_processor, image_size)
    return ModelInfo(
        model_id=model_id,
        revision=revision,
        architecture=type(model).__name__,
        model_type=config.model_type,
        dim=_projection_dim(config) if paired else vision_dim,
        image_size=image_size,
        text_max_length=_text_max_length(tokenizer, config) if paired else 0,
        preprocess=_jsonable(image_processor.to_dict()),
        has_text=paired,
        pooling=pooling,
        multilingual=paired and (type(tokenizer).__name__ in MULTILINGUAL_TOKENIZERS
                                 or "multilingual" in model_id.lower() or "i18n" in model_id.lower()),
    )


IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")



def _checked_graph(path: Path, kind: str, what: str, inputs: np.ndarray) -> tuple[TowerGraph, float]:
    """The `kind` graph at `path` and its worst cosine to the build's fp32 vectors of the calibration `inputs`, if it
    agrees as any fast path must; EncoderError with a sentence otherwise."""
    graph = TowerGraph.open(path, threads=torch.get_num_threads(), kind=kind)
    try:
        vectors = _normalise(torch.from_numpy(graph(inputs)))
    except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types (a graph of another shape)
        raise EncoderError(f"{path.name} does not run on this model's {what} ({first_line(error)}).") from None
    cosine = worst_cosine(vectors, graph.references)
    if not cosine >= MIN_CALIBRATION_COSINE:
        raise EncoderError(f"the {kind} graph {path.name} agrees with the build's fp32 vectors only to cosine "
                           f"{cosine:.5f} (< {MIN_CALIBRATION_COSINE:g}) on this CPU")
    log.info("%s embedded by the %s graph %s (onnxruntime int8), cosine to the build's fp32 vectors %.5f", what, kind,
             path.name, cosine)
    return graph, cosine


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


def image_inputs(image_processor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """The image processor's model inputs: pixel_values, plus pixel_attention_mask and spatial_shapes for NaFlex
    processors (SigLIP 2), whose patches are padded to a fixed count so a batch stacks like any other."""
    output = image_processor(images=images, return_tensors="pt")
    return {name: output[name] for name in IMAGE_INPUTS if name in output}


@torch.inference_mode()
def _vision_head(model, image_processor, image_size: int) -> tuple[str, int]:
    """How an image-only model's output becomes one vector, and its width, from one forward pass (configs name the
    width differently per family): 'cls' for transformers with a class token (ViT, DeiT, DINOv2, BEiT: their last
    layer is normalised and the class token is what they were trained to summarise with; ViT's tanh pooler is often
    untrained), else 'pooler' where the model pools (ResNet, ConvNeXt, Swin), else 'mean'."""
    device = next(model.parameters()).device
    inputs = image_inputs(image_processor, calibration_images(image_size)[:1])
    output = model(**{name: value.to(device) for name, value in inputs.items()})
    if getattr(getattr(model, "embeddings", None), "cls_token", None) is not None:
        pooling = "cls"
    else:
        pooling = "pooler" if getattr(output, "pooler_output", None) is not None else "mean"
    return pooling, int(_pool(output, pooling).shape[-1])


def _pool(output, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return output.last_hidden_state[:, 0]
    if pooling == "pooler":
        return output.pooler_output.flatten(1)  # ResNet's (B, C, 1, 1)
    hidden = output.last_hidden_state
    return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(dim=-1)


def _projection_dim(config) -> int:
    for name in ("projection_dim", "projection_size"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return int(config.text_config.hidden_size)  # SigLIP: no projection, text pooler has the shared width


def _image_size(image_processor, config) -> int:
    crop = getattr(image_processor, "crop_size", None)
    size = getattr(image_processor, "size", None)
    for candidate in (crop, size):
        if candidate is None:
            continue
        values = candidate if isinstance(candidate, dict) else vars(candidate) if hasattr(candidate, "__dict__") else {}
        for key in ("height", "shortest_edge", "width"):
            value = values.get(key) if isinstance(values, dict) else None
            if value:
                return int(value)
    vision = getattr(config, "vision_config", config)
    return int(getattr(vision, "image_size", None) or 224)


def reference_ids(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """SigLIP's reference text ids (big_vision: lowercase ASCII, tokenize, append EOS without BOS and keep it when
    cutting, pad with the pad id on the right to exactly `length`). Whatever a repo's tokenizer_config says about
    add_bos_token, padding_side or model_input_names, the ids are the same; nothing else of the text is touched,
    so any script reaches the tokenizer as typed."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # split_special_tokens: a typed "<eos>" is plain text, as sentencepiece reads it, and cannot end a query early
    pieces = tokenizer([text.translate(ASCII_LOWER) for text in texts], add_special_tokens=False,
                       split_special_tokens=True, verbose=False)["input_ids"] if texts else []
    rows = [ids[:length - 1] + [tokenizer.eos_token_id] for ids in pieces]
    return torch.tensor([row + [pad] * (length - len(row)) for row in rows], dtype=torch.long).reshape(-1, length)


def _text_max_length(tokenizer, config) -> int:
    positions = int(getattr(config.text_config, "max_position_embeddings", 77) or 77)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < positions:
        return model_max
    return positions


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _tokenizer_problem(model_id: str, folder: Path, error: BaseException) -> str:
    """One sentence for a tokenizer that cannot be built, naming the missing package when that is the cause."""

    try:
        declared = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        declared = None
    what = f"its tokenizer ({declared})" if declared else "its tokenizer"
    text = f"{getattr(error, 'name', None) or ''} {error}".lower()
    package = next((name for name in TOKENIZER_PACKAGES if name in text), None)
    if isinstance(error, ImportError) or package:
        package = package or getattr(error, "name", None) or "a package"
        return (f"--model {model_id}: {what} needs the Python package {package}, which is not installed here; "
                f"install it (pip install {package}, as requirements.txt lists) or pass another --model.")
    return f"--model {model_id}: {what} could not be loaded ({first_line(error)})."

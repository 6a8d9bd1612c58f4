"""The one encoder both the builder and the app use: model loading, preprocessing, dtype, L2 norm.

CLIP-family checkpoints (CLIP, SigLIP: paired text and image towers) embed both; image-only backbones (DINOv2, ViT,
ResNet, ... through the Auto classes) embed images only, for galleries where visual similarity matters most."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import first_line, hub_unreachable
from .precision import MIN_CALIBRATION_COSINE, PRECISIONS, calibration_images, use_fast_path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
# Families whose text tower was trained on fixed-length padded input; the rest pool at EOS and pad to longest.
PAD_TO_MAX_LENGTH = {"siglip", "siglip2"}
# Families trained (and evaluated, in big_vision) on lowercased text. SiglipTokenizer lowercases by itself
# (do_lower_case), and so does Siglip2Tokenizer (NaFlex repos); fixed-resolution SigLIP 2 repos declare model_type
# "siglip" with a GemmaTokenizer, which does not, so the encoder lowercases for the whole family.
LOWERCASE_TEXT = {"siglip", "siglip2"}
# Packages a tokenizer class may need beyond transformers, as named in its import errors (lowercase match).
TOKENIZER_PACKAGES = ("sentencepiece", "protobuf", "tiktoken")
# What is fetched from a Hub repo: exactly the files transformers loads, by name (never patterns: laion's repos hold
# open_clip_model.safetensors beside model.safetensors, and every *.bin / *.h5 / *.msgpack copy is left alone).
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded checkpoints: the index, then exactly the shards it names
CONFIG_FILE = "config.json"
# The processor and tokenizer files of every CLIP-family layout; only those the repo has are fetched. Both the
# sentencepiece model and tokenizer.json come when a repo has both (SigLIP 2): which one loads depends on the class.
PROCESSOR_FILES = (
    "preprocessor_config.json", "processor_config.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "tokenizer.model", "sentencepiece.bpe.model",
)
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")  # never fetched, never opened
# The Hub's automatic conversion: a bot opens a pull request adding model.safetensors (what transformers'
# safetensors_conversion.py looks for; only this author is trusted, as there).
CONVERSION_BOT = "SFconvertbot"
CONVERSION_TITLE = "Adding `safetensors` variant of this model"



class EncoderError(ValueError):
    """A model that cannot serve as an encoder; the message names the setting that fixes it."""


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

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(model_id: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Return a local folder for a model id or path, and the commit its files come from (None for local folders).

    From the Hub only the files transformers loads are fetched, by exact name, all from one commit. When that
    revision has pickled weights only, the Hub's safetensors conversion pull request of that same revision is
    used instead, and its commit is the one returned (so loading again by it gives the same bytes)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local, None
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:  # a path, not a Hub id
        raise EncoderError(f"--model {model_id}: no such folder. Pass an existing model folder or a Hub model id.")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    api = HfApi()
    try:
        # Cache-aware: writes refs/<revision> for offline use later, and answers from it when the Hub is down.
        commit = api.resolve_revision(model_id, revision=revision).resolved
        try:
            info = api.model_info(model_id, revision=commit, files_metadata=True)
        except Exception as error:  # noqa: BLE001 - only 'the Hub cannot be reached' falls back to the cache
            if not hub_unreachable(error):
                raise
            return _cached_snapshot(model_id, commit), commit
        commit, names = _files_to_fetch(api, model_id, revision, info)
        return _fetch(model_id, commit, names), commit
    except (RepositoryNotFoundError, GatedRepoError):
        raise EncoderError(
            f"--model {model_id}: no such model on the Hub (or it is private or gated: set HF_TOKEN)."
        ) from None
    except RevisionNotFoundError:
        raise EncoderError(f"--model {model_id}: it has no revision {revision!r}; pass an existing branch, tag or "
                           "commit with --model-revision.") from None
    except RevisionResolutionError:
        raise EncoderError(
            f"--model {model_id}: not in the local cache and the Hub cannot be reached; "
            "connect to the Hub once or pass a local model folder."
        ) from None
    except EncoderError:
        raise
    except HfHubHTTPError as error:
        if hub_unreachable(error):
            raise EncoderError(f"--model {model_id}: the Hub cannot be reached ({first_line(error)}); try again "
                               "later or pass a local model folder.") from None
        raise EncoderError(f"--model {model_id}: the Hub refused the download ({first_line(error)}).") from None
    except Exception as error:  # noqa: BLE001 - network failures become a sentence; anything else propagates
        if not hub_unreachable(error):
            raise
        raise EncoderError(f"--model {model_id}: the Hub cannot be reached ({type(error).__name__}); try again "
                           "later or pass a local model folder.") from None


def _files_to_fetch(api, model_id: str, revision: str | None, info) -> tuple[str, list[str]]:
    """The commit to download from and the exact names to fetch there (a sharded index's shards come later)."""
    files = {sibling.rfilename: sibling for sibling in info.siblings or []}
    where = f"revision {revision}" if revision else "main"
    if CONFIG_FILE not in files:
        extra = " (it ships OpenCLIP files only)" if any(n.startswith("open_clip") for n in files) else ""
        raise EncoderError(f"--model {model_id}: the repo has no transformers {CONFIG_FILE} at {where}{extra}; "
                           "pass a transformers CLIP-family checkpoint.")
    commit = info.sha
    weights = _safetensors_weights(files)
    if weights is None:
        found = _conversion_pull_request(api, model_id, files)
        if found is None:
            pickled = sorted(n for n in files if n.endswith(PICKLED_SUFFIXES)) or ["none"]
            raise EncoderError(
                f"--model {model_id}: the repo has no safetensors weights at {where} (only {', '.join(pickled)}) "
                "and no safetensors conversion pull request, and the encoder refuses pickled weights; pass a "
                "model that has model.safetensors."
            )
        number, info = found
        files = {sibling.rfilename: sibling for sibling in info.siblings or []}
        weights = _safetensors_weights(files)
        log.info("%s has no safetensors weights at %s: the weights (and configs) come from the safetensors "
                 "conversion ref refs/pr/%d, commit %s", model_id, where, number, info.sha)
        commit = info.sha
    return commit, [CONFIG_FILE, *weights, *(name for name in PROCESSOR_FILES if name in files)]


def _safetensors_weights(files) -> list[str] | None:
    """The weights file transformers loads from a folder of these names (with use_safetensors), if any."""
    for name in (WEIGHTS_FILE, WEIGHTS_INDEX):
        if name in files:
            return [name]
    return None


def _conversion_pull_request(api, model_id: str, base: dict):
    """(number, ModelInfo at its head) of the open SFconvertbot pull request that converts exactly this revision,
    or None. As transformers' safetensors_conversion does, only the bot's PR titled CONVERSION_TITLE counts; instead
    of requiring its parent to be main's head, its head must hold the same config, processor files and pickled
    weights (same blob ids) as the revision asked for, so the safetensors are that revision's weights and the
    configs loaded beside them are byte-identical. A stale conversion (of an older main) is skipped."""
    from huggingface_hub.errors import HfHubHTTPError

    kept = [n for n in base if n == CONFIG_FILE or n in PROCESSOR_FILES or n.endswith(PICKLED_SUFFIXES)]
    try:
        for pr in api.get_repo_discussions(model_id, author=CONVERSION_BOT, discussion_type="pull_request",
                                           discussion_status="open"):
            if not (pr.is_pull_request and pr.status == "open" and pr.author == CONVERSION_BOT
                    and pr.title == CONVERSION_TITLE):
                continue
            head = api.model_info(model_id, revision=pr.git_reference, files_metadata=True)
            files = {sibling.rfilename: sibling for sibling in head.siblings or []}
            same = all(n in files and files[n].blob_id == base[n].blob_id for n in kept)
            if same and _safetensors_weights(files) is not None:
                return pr.num, head
            log.info("%s: refs/pr/%d (%s) does not convert this revision; skipped", model_id, pr.num, pr.title)
    except HfHubHTTPError as error:  # discussions disabled, ... : no conversion to use
        if hub_unreachable(error):
            raise
        log.warning("%s: could not list pull requests (%s)", model_id, first_line(error))
    return None


def _fetch(model_id: str, commit: str, names: list[str]) -> Path:
    """Download exactly `names` (and, for a sharded index, the shards it lists) at `commit`; the snapshot folder."""
    import json

    from huggingface_hub import hf_hub_download

    paths = [Path(hf_hub_download(model_id, name, revision=commit)) for name in names]
    folder = paths[0].parent  # config.json is at the root
    if WEIGHTS_INDEX in names:
        index = json.loads((folder / WEIGHTS_INDEX).read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards or any(not s.endswith(".safetensors") or ".." in s.split("/") for s in shards):
            raise EncoderError(f"--model {model_id}: {WEIGHTS_INDEX} lists no usable safetensors shards; pass a "
                               "model whose index names its shard files.")
        for shard in shards:
            hf_hub_download(model_id, shard, revision=commit)
    return folder


def _cached_snapshot(model_id: str, commit: str) -> Path:
    """The Hub cannot be reached: the cached snapshot of `commit`, if it holds safetensors weights and a config."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model_id, CONFIG_FILE, revision=commit)
    folder = Path(config).parent if isinstance(config, str) else None
    if folder is None or _safetensors_weights({p.name for p in folder.iterdir()}) is None:
        raise EncoderError(
            f"--model {model_id}: not in the local cache and the Hub cannot be reached; "
            "connect to the Hub once or pass a local model folder."
        )
    log.warning("the Hub cannot be reached; using the cached %s at %s", model_id, commit[:12])
    return folder


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
                 precision: str = "fp32"):
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        # What the model computes in: fp32 | bf16 | int8 on CPU, bf16-autocast on CUDA. Not part of ModelInfo:
        # the manifest identifies the model, and query vectors from any precision used here match it (checked).
        self.precision = precision
        self._input_dtype = torch.float32

    @classmethod
    def load(cls, model_id: str, revision: str | None = None, device: str | torch.device = "auto",
             precision: str = "fp32", min_cosine: float = MIN_CALIBRATION_COSINE,
             batch: int | None = None) -> Encoder:
        """Load the model for `device`. `precision` (CPU only): "fp32" (default, the builder's reference),
        "bf16", "int8", or "auto" (the app: the fastest fast path for this host first, see auto_precisions). A fast
        path is kept only if its embeddings agree with fp32 (cosine >= min_cosine, worst row, on a fixed
        calibration batch of texts and images); otherwise the next one is tried, then fp32, and the log says why.
        Given `batch` where auto has a real choice (AMX), the faster on passes of `batch` images is kept (the app
        passes 1: one query at a time).
        `encoder.precision` tells what was kept."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        if precision not in PRECISIONS:
            raise EncoderError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")

        folder, resolved = resolve_model(model_id, revision)
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise EncoderError(f"--model {model_id}: not a transformers model folder ({first_line(error)}).") from None
        paired = hasattr(config, "text_config") and hasattr(config, "vision_config")
        try:
            model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as error:
            raise EncoderError(f"--model {model_id}: could not be loaded ({first_line(error)}).") from None
        if paired and not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise EncoderError(
                f"--model {model_id}: {type(model).__name__} cannot embed both text and images; "
                "pass a CLIP-family checkpoint such as CLIP, SigLIP or SigLIP 2."
            )
        if not paired and getattr(model, "main_input_name", None) != "pixel_values":
            raise EncoderError(
                f"--model {model_id}: a '{config.model_type}' model does not take images; pass a CLIP-family "
                "checkpoint (CLIP, SigLIP: text and image search) or an image model such as DINOv2, ViT or ResNet "
                "(image search only)."
            )
        try:
            # The PIL backend everywhere: torchvision's resize differs slightly, and index vectors and query vectors
            # must come from identical pixels whichever host runs the code.
            image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        except (OSError, ValueError, KeyError) as error:
            raise EncoderError(f"--model {model_id}: it has no usable image processor (preprocessor_config.json: "
                               f"{first_line(error)}); save the model's image processor beside it.") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder) if paired else None
        except (ImportError, OSError, ValueError, KeyError, AttributeError, TypeError) as error:
            raise EncoderError(_tokenizer_problem(model_id, folder, error)) from None
        torch_device = device if isinstance(device, torch.device) else pick_device(device)
        if torch_device.type != "cpu" and precision in ("bf16", "int8"):
            raise EncoderError(f"precision {precision}: the fast paths are for CPU inference; on {torch_device.type} "
                               "the encoder uses bf16 autocast (use precision auto or fp32).")
        model.eval().to(torch_device)
        image_size = _image_size(image_processor, config)
        pooling, vision_dim = ("projection", 0) if paired else _vision_head(model, image_processor, image_size)
        info = ModelInfo(
            model_id=model_id if resolved else str(folder),
            revision=resolved,
            architecture=type(model).__name__,
            model_type=config.model_type,
            dim=_projection_dim(config) if paired else vision_dim,
            image_size=image_size,
            text_max_length=_text_max_length(tokenizer, config) if paired else 0,
            preprocess=_jsonable(image_processor.to_dict()),
            has_text=paired,
            pooling=pooling,
        )
        encoder = cls(model, image_processor, tokenizer, info, torch_device,
                      "bf16-autocast" if torch_device.type == "cuda" else "fp32")
        if torch_device.type == "cpu" and precision != "fp32":
            use_fast_path(encoder, precision, min_cosine, lambda: AutoModel.from_pretrained(
                folder, use_safetensors=True, trust_remote_code=False).eval(), batch)
        log.info("loaded %s (%s, dim %d) on %s, precision %s", info.model_id, info.architecture, info.dim,
                 torch_device, encoder.precision)
        return encoder

    # --- images -------------------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """What the model takes for these images; safe in DataLoader worker processes (no model involved)."""
        return image_inputs(self.image_processor, images)

    @torch.inference_mode()
    def encode_pixels(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """Vectors for preprocessed images (preprocess()'s dict, batched)."""
        inputs = {name: value.to(self.device, dtype=self._input_dtype if name == "pixel_values" else None,
                                 non_blocking=True) for name, value in inputs.items()}
        with self._autocast():
            if self.info.has_text:
                features = self.model.get_image_features(**inputs).pooler_output
            else:
                features = _pool(self.model(**inputs), self.info.pooling)
        return _normalise(features)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.preprocess(images))

    # --- text ---------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if not self.info.has_text:
            raise EncoderError(f"{self.info.model_id} is an image-only model ({self.info.architecture}): it cannot "
                               "embed text. Build with a CLIP-family --model for text search.")
        padding = "max_length" if self.info.model_type in PAD_TO_MAX_LENGTH else True
        texts = [text.lower() for text in texts] if self.info.model_type in LOWERCASE_TEXT else list(texts)
        return self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.info.text_max_length, return_tensors="pt"
        )

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = {name: value.to(self.device) for name, value in self.tokenize(texts).items()}
        with self._autocast():
            features = self.model.get_text_features(**tokens).pooler_output
        return _normalise(features)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")



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
    import json

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

"""The one CLIP-family encoder both the builder and the app use: model loading, preprocessing, dtype, L2 norm."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MODEL = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
# Families whose text tower was trained on fixed-length padded input; the rest pool at EOS and pad to longest.
PAD_TO_MAX_LENGTH = {"siglip", "siglip2"}
# Only weights and configs are fetched: safetensors, never pickled *.bin / *.pt files.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


class EncoderError(ValueError):
    """A model that cannot serve as a CLIP-family encoder; the message names the setting that fixes it."""


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

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(model_id: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Return a local folder for a model id or path, and the commit it resolved to (None for local folders)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local, None
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:  # a path, not a Hub id
        raise EncoderError(f"--model {model_id}: no such folder. Pass an existing model folder or a Hub model id.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(model_id, revision=revision, allow_patterns=MODEL_FILES))
    except RepositoryNotFoundError:
        raise EncoderError(
            f"--model {model_id}: no such model on the Hub (or it is private: set HF_TOKEN)."
        ) from None
    except LocalEntryNotFoundError:
        raise EncoderError(
            f"--model {model_id}: not in the local cache and the Hub cannot be reached; "
            "connect to the Hub once or pass a local model folder."
        ) from None
    except HfHubHTTPError as error:
        raise EncoderError(f"--model {model_id}: the Hub refused the download ({error}).") from None
    return folder, folder.name  # snapshots/<commit sha>


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

    def __init__(self, model, image_processor, tokenizer, info: ModelInfo, device: torch.device):
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.info = info
        self.device = device

    @classmethod
    def load(cls, model_id: str, revision: str | None = None, device: str | torch.device = "auto") -> Encoder:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        folder, resolved = resolve_model(model_id, revision)
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise EncoderError(f"--model {model_id}: not a transformers model folder ({_first_line(error)}).") from None
        if not (hasattr(config, "text_config") and hasattr(config, "vision_config")):
            raise EncoderError(
                f"--model {model_id}: a '{config.model_type}' model has no paired text and image towers; "
                "pass a CLIP-family checkpoint such as CLIP, SigLIP or SigLIP 2."
            )
        try:
            model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
            # The PIL backend everywhere: torchvision's resize differs slightly, and index vectors and query vectors
            # must come from identical pixels whichever host runs the code.
            image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as error:
            raise EncoderError(f"--model {model_id}: could not be loaded ({_first_line(error)}).") from None
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise EncoderError(
                f"--model {model_id}: {type(model).__name__} cannot embed both text and images; "
                "pass a CLIP-family checkpoint such as CLIP, SigLIP or SigLIP 2."
            )
        torch_device = device if isinstance(device, torch.device) else pick_device(device)
        model.eval().to(torch_device)
        info = ModelInfo(
            model_id=model_id if resolved else str(folder),
            revision=resolved,
            architecture=type(model).__name__,
            model_type=config.model_type,
            dim=_projection_dim(config),
            image_size=_image_size(image_processor, config),
            text_max_length=_text_max_length(tokenizer, config),
            preprocess=_jsonable(image_processor.to_dict()),
        )
        log.info("loaded %s (%s, dim %d) on %s", info.model_id, info.architecture, info.dim, torch_device)
        return cls(model, image_processor, tokenizer, info, torch_device)

    # --- images -------------------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Pixels the model sees; safe to call in DataLoader worker processes (no model involved)."""
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        pixel_values = pixel_values.to(self.device, non_blocking=True)
        with self._autocast():
            features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return _normalise(features)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.preprocess(images))

    # --- text ---------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.info.model_type in PAD_TO_MAX_LENGTH else True
        return self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.info.text_max_length, return_tensors="pt"
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


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


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
    return int(config.vision_config.image_size)


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


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]

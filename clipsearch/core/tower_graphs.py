"""The encoder's towers as ONNX Runtime int8 graphs: the app's queries in less time than torch's int8 takes.

The builder traces an fp32 tower to ONNX (with eager attention, whose pattern onnxruntime recognises), fuses its
attention, skip-LayerNorm and GELU with onnxruntime's transformer optimizer where the fused graph computes what the
traced one does, quantises its MatMuls and attentions to int8 per output channel (onnxruntime's dynamic
quantisation: activations quantised per call, as torch's int8 does) and stores in the file the fp32 vectors of the
precision check's inputs. The app keeps a graph only if its vectors agree with those as well as any fast path must
(precision.MIN_CALIBRATION_COSINE); otherwise torch's int8 tower answers. The image graph takes pixels; the text
graph (SigLIP family only) takes the token embeddings, looked up by torch from the serving copy's fp16 table, so the
256k-row table is neither in the graph nor downloaded twice."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import EncoderError, first_line
from .precision import CALIBRATION_TEXTS, calibration_images, worst_cosine

log = logging.getLogger(__name__)

# Each file's metadata names its layout; another layout is refused with a sentence.
FORMATS = {"image": "clipsearch-onnx-images/1", "text": "clipsearch-onnx-texts/1"}
REFERENCES = {"image": "clipsearch.reference_images", "text": "clipsearch.reference_texts"}  # fp32 check vectors
OPSET = 17
# How the graphs are made (benchmarks key their cached builds by it): 2 = eager attention traced, fused by
# onnxruntime.transformers' "clip" optimizer, MatMul and Attention int8 (1 = traced as it is, MatMul int8 only).
RECIPE = 2
MIN_FUSED_COSINE = 0.9999  # the fused fp32 graph against the traced one on the example inputs: else it is not used
# Families whose text tower the text graph reproduces: big_vision's recipe (fixed-length padding, no attention mask)
# then last-position pooling and a head, as SiglipTextModel.forward computes it (transformers 5.23).
TEXT_GRAPH_FAMILIES = {"siglip", "siglip2"}


def export_image_graph(encoder, path: Path, references: np.ndarray) -> None:
    """Write `encoder`'s image tower (fp32, on the CPU) as an int8 ONNX graph to `path`, with the fp32 vectors of
    the calibration pictures (`references`) the app checks it against. Needs the onnx package (the builder's)."""
    pixels = encoder.preprocess(calibration_images(encoder.info.image_size))["pixel_values"]
    config = encoder.model.config
    _export(_ImageTower(encoder), pixels, "pixel_values", path, "image", references,
            getattr(config, "vision_config", None) or config)


def has_text_graph(encoder) -> bool:
    """Whether `encoder`'s text tower can be exported as a text graph (the SigLIP family's layout)."""
    text = getattr(encoder.model, "text_model", None)
    return encoder.info.has_text and encoder.info.model_type in TEXT_GRAPH_FAMILIES and all(
        isinstance(getattr(text, name, None), torch.nn.Module) for name in ("embeddings", "encoder",
                                                                          "final_layer_norm", "head"))


def export_text_graph(encoder, path: Path, references: np.ndarray) -> None:
    """Write `encoder`'s text tower after its token embeddings (fp32, on the CPU) as an int8 ONNX graph to `path`,
    with the fp32 vectors of the calibration texts (`references`). Only where has_text_graph(encoder)."""
    embeddings = encoder.text_embeddings(list(CALIBRATION_TEXTS))
    _export(_TextTower(encoder), embeddings, "embeddings", path, "text", references, encoder.model.config.text_config)


def _export(tower: torch.nn.Module, example: torch.Tensor, input_name: str, path: Path, kind: str,
            references: np.ndarray, config) -> None:
    import onnx  # lazy: the builder's dependency only (not in the Space); the app only runs the graph
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: it imports onnx

    with tempfile.TemporaryDirectory() as work:
        traced = Path(work) / "fp32.onnx"
        # The tracer warns that shapes become constants: they are the model's own input size, all the app feeds it.
        with torch.inference_mode(), warnings.catch_warnings(), _eager_attention(tower):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(tower, (example,), str(traced), input_names=[input_name], output_names=["features"],
                              dynamic_axes={input_name: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)  # the TorchScript tracer: no onnxscript needed
        graph = _fused(traced, Path(work) / "fused.onnx", example.numpy(), input_name, config, kind)
        # MatMuls and fused attentions only: the patch embedding's ConvInteger has no CPU kernel in onnxruntime 1.23.
        # The fused ops come from onnxruntime's own domain, whose output types shape inference cannot tell.
        with _quiet_root():
            quantize_dynamic(graph, Path(work) / "int8.onnx", op_types_to_quantize=["MatMul", "Attention"],
                             per_channel=True, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        graph = onnx.load(str(Path(work) / "int8.onnx"))
    vectors = np.ascontiguousarray(references, dtype=np.float32)
    stored = {"format": FORMATS[kind], REFERENCES[kind]: json.dumps(
        {"shape": vectors.shape, "float32": base64.b64encode(vectors.tobytes()).decode()})}
    for key, value in stored.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


@contextlib.contextmanager
def _eager_attention(tower: torch.nn.Module):
    """The tower's model computing attention eagerly while it is traced (transformers 5: set_attn_implementation):
    SDPA traces as scaled query and key products that onnxruntime's attention fusion does not recognise."""
    model = tower.model if isinstance(tower, _ImageTower) else tower.text
    top = getattr(model, "set_attn_implementation", None)
    before = getattr(model.config, "_attn_implementation", None)
    try:
        if top and before not in (None, "eager"):
            top("eager")
    except (ValueError, AttributeError) as error:  # a model that offers no eager attention: traced as it is
        log.info("attention traced as %s (%s)", before, first_line(error))
        top = None
    try:
        yield
    finally:
        if top and before not in (None, "eager"):
            top(before)


def _fused(traced: Path, out: Path, example: np.ndarray, input_name: str, config, kind: str) -> Path:
    """`traced` with its attention, skip-LayerNorms and GELUs fused by onnxruntime's transformer optimizer (the "clip"
    fusions, which fit CLIP's and SigLIP's towers), written to `out`, if that computes what `traced` does on
    `example`; else `traced` (a model whose layers the optimizer mis-reads, or one it cannot read)."""
    from onnxruntime.transformers import optimizer  # lazy: the builder's only

    try:
        with _quiet_root():
            model = optimizer.optimize_model(str(traced), model_type="clip", opt_level=1,
                                             num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                                             hidden_size=int(getattr(config, "hidden_size", 0) or 0))
            model.save_model_to_file(str(out))
        cosine = worst_cosine(*(_unit(_run(graph, input_name, example)) for graph in (out, traced)))
    except Exception as error:  # noqa: BLE001 - the optimizer's and onnxruntime's many types: the traced graph serves
        log.warning("the %s graph is quantised unfused: onnxruntime's optimizer failed (%s: %s)", kind,
                    type(error).__name__, first_line(error))
        return traced
    fused = {op: count for op, count in model.get_fused_operator_statistics().items() if count}
    if not cosine >= MIN_FUSED_COSINE:
        log.warning("the %s graph is quantised unfused: the fused graph agrees with the traced one only to cosine "
                    "%.6f", kind, cosine)
        return traced
    log.info("%s graph fused: %s (cosine to the traced graph %.6f)", kind,
             ", ".join(f"{count} {op}" for op, count in fused.items()) or "nothing", cosine)
    return out


@contextlib.contextmanager
def _quiet_root():
    """onnxruntime's quantiser and optimizer write their notes to the root logger, a line per tensor: errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _run(path: Path, input_name: str, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime  # lazy, as in TowerGraph.open

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: inputs})[0]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


class TowerGraph:
    """A tower's graph loaded for this CPU: its input (numpy, batched) → features, not yet normalised."""

    def __init__(self, session, references: np.ndarray):
        self.session = session
        self.references = references
        self._input = session.get_inputs()[0].name

    @classmethod
    def open(cls, path: Path, threads: int, kind: str) -> TowerGraph:
        """Load the `kind` ("image" or "text") graph at `path` to run on `threads` threads; EncoderError with a
        sentence for a file of another layout or one onnxruntime cannot load."""
        try:
            import onnxruntime  # lazy: an app without it still serves, with torch's towers (the ImportError below)
        except ImportError:
            raise EncoderError("onnxruntime is not installed (pip install -r requirements.txt)") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # Idle pool threads sleep rather than spin between queries, as the app's OpenMP threads do (decision 0043).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its optimiser's notes are not the visitor's business
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
            raise EncoderError(f"{path.name} cannot be loaded by onnxruntime ({first_line(error)}).") from None
        metadata = session.get_modelmeta().custom_metadata_map
        if metadata.get("format") != FORMATS[kind] or REFERENCES[kind] not in metadata:
            raise EncoderError(f"{path.name} is not {'an' if kind == 'image' else 'a'} {kind} graph this app can "
                               f"load (format {metadata.get('format')!r}, expected {FORMATS[kind]}).")
        stored = json.loads(metadata[REFERENCES[kind]])
        references = np.frombuffer(base64.b64decode(stored["float32"]), dtype=np.float32).reshape(stored["shape"])
        return cls(session, references)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(inputs, dtype=np.float32)})[0]


class _ImageTower(torch.nn.Module):
    """Encoder.image_features as a module: what the tracer records."""

    def __init__(self, encoder):
        super().__init__()
        self.model, self.encoder = encoder.model, encoder

    def forward(self, pixel_values):
        return self.encoder.image_features({"pixel_values": pixel_values})


class _TextTower(torch.nn.Module):
    """SiglipTextModel.forward (transformers 5.23) after its embeddings, with no attention mask (the reference recipe
    pads to a fixed length and attends to every position): what the tracer records. The export's check against the
    fp32 vectors of the whole model catches a transformers release that computes it otherwise."""

    def __init__(self, encoder):
        super().__init__()
        self.text = encoder.model.text_model

    def forward(self, embeddings):
        hidden = self.text.final_layer_norm(self.text.encoder(inputs_embeds=embeddings).last_hidden_state)
        return self.text.head(hidden[:, -1, :])

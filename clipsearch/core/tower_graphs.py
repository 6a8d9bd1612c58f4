"""The encoder's towers as ONNX Runtime int8 graphs: the app's queries in less time than torch's int8 takes.

The builder traces an fp32 tower to ONNX, quantises its MatMuls to int8 per output channel (onnxruntime's dynamic
quantisation: activations quantised per call, as torch's int8 does) and stores in the file the fp32 vectors of the
precision check's inputs. The app keeps a graph only if its vectors agree with those as well as any fast path must
(precision.MIN_CALIBRATION_COSINE); otherwise torch's int8 tower answers. The image graph takes pixels; the text
graph (SigLIP family only) takes the token embeddings, looked up by torch from the serving copy's fp16 table, so the
256k-row table is neither in the graph nor downloaded twice."""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import EncoderError, first_line
from .precision import CALIBRATION_TEXTS, calibration_images

# Each file's metadata names its layout; another layout is refused with a sentence.
FORMATS = {"image": "clipsearch-onnx-images/1", "text": "clipsearch-onnx-texts/1"}
REFERENCES = {"image": "clipsearch.reference_images", "text": "clipsearch.reference_texts"}  # fp32 check vectors
OPSET = 17
# Families whose text tower the text graph reproduces: big_vision's recipe (fixed-length padding, no attention mask)
# then last-position pooling and a head, as SiglipTextModel.forward computes it (transformers 5.23).
TEXT_GRAPH_FAMILIES = {"siglip", "siglip2"}


def export_image_graph(encoder, path: Path, references: np.ndarray) -> None:
    """Write `encoder`'s image tower (fp32, on the CPU) as an int8 ONNX graph to `path`, with the fp32 vectors of
    the calibration pictures (`references`) the app checks it against. Needs the onnx package (the builder's)."""
    pixels = encoder.preprocess(calibration_images(encoder.info.image_size))["pixel_values"]
    _export(_ImageTower(encoder), pixels, "pixel_values", path, "image", references)


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
    _export(_TextTower(encoder), embeddings, "embeddings", path, "text", references)


def _export(tower: torch.nn.Module, example: torch.Tensor, input_name: str, path: Path, kind: str,
            references: np.ndarray) -> None:
    import onnx  # lazy: the builder's dependency only (not in the Space); the app only runs the graph
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: it imports onnx

    with tempfile.TemporaryDirectory() as work:
        traced = Path(work) / "fp32.onnx"
        # The tracer warns that shapes become constants: they are the model's own input size, all the app feeds it.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(tower, (example,), str(traced), input_names=[input_name], output_names=["features"],
                              dynamic_axes={input_name: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)  # the TorchScript tracer: no onnxscript needed
        # MatMuls only: the patch embedding's ConvInteger has no CPU kernel in onnxruntime 1.23
        root = logging.getLogger()
        level, _ = root.level, root.setLevel(logging.ERROR)  # its notes on the root logger: a line per tensor
        try:
            quantize_dynamic(traced, Path(work) / "int8.onnx", op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        graph = onnx.load(str(Path(work) / "int8.onnx"))
    vectors = np.ascontiguousarray(references, dtype=np.float32)
    stored = {"format": FORMATS[kind], REFERENCES[kind]: json.dumps(
        {"shape": vectors.shape, "float32": base64.b64encode(vectors.tobytes()).decode()})}
    for key, value in stored.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


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

"""The image tower as an ONNX Runtime int8 graph: the app's picture queries in ~2/3 of torch's int8 time.

The builder traces the fp32 image tower (Encoder.image_features) to ONNX, quantises its MatMuls to int8 per output
channel (onnxruntime's dynamic quantisation: activations quantised per call, as torch's int8 does) and stores in
the file the fp32 vectors of the precision check's pictures. The app keeps the graph only if its vectors agree with
those as well as any fast path must (precision.MIN_CALIBRATION_COSINE); otherwise torch's int8 tower answers."""

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
from .precision import calibration_images

FORMAT = "clipsearch-onnx-images/1"  # the file's metadata names its layout; another layout is refused with a sentence
REFERENCE = "clipsearch.reference_images"  # metadata key: the fp32 vectors of precision.calibration_images
OPSET = 17


def export_image_graph(encoder, path: Path, references: np.ndarray) -> None:
    """Write `encoder`'s image tower (fp32, on the CPU) as an int8 ONNX graph to `path`, with the fp32 vectors of
    the calibration pictures (`references`) the app checks it against. Needs the onnx package (the builder's)."""
    import onnx  # lazy: the builder's dependency only (not in the Space); the app only runs the graph
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: it imports onnx

    pixels = encoder.preprocess(calibration_images(encoder.info.image_size))["pixel_values"]
    with tempfile.TemporaryDirectory() as work:
        traced = Path(work) / "fp32.onnx"
        # The tracer warns that shapes become constants: they are the model's own image size, all the app feeds it.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(_ImageTower(encoder), (pixels,), str(traced), input_names=["pixel_values"],
                              output_names=["features"], dynamic_axes={"pixel_values": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)  # the TorchScript tracer: no onnxscript needed
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
    stored = {"format": FORMAT, REFERENCE: json.dumps({"shape": vectors.shape,
                                                       "float32": base64.b64encode(vectors.tobytes()).decode()})}
    for key, value in stored.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


class ImageGraph:
    """An image tower graph loaded for this CPU: pixel_values (numpy, batched) → features, not yet normalised."""

    def __init__(self, session, references: np.ndarray):
        self.session = session
        self.references = references

    @classmethod
    def open(cls, path: Path, threads: int) -> ImageGraph:
        """Load the graph at `path` to run on `threads` threads; EncoderError with a sentence for a file of another
        layout or one onnxruntime cannot load."""
        try:
            import onnxruntime  # lazy: an app without it still serves, with torch's tower (the ImportError below)
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
        if metadata.get("format") != FORMAT or REFERENCE not in metadata:
            raise EncoderError(f"{path.name} is not an image graph this app can load (format "
                               f"{metadata.get('format')!r}, expected {FORMAT}).")
        stored = json.loads(metadata[REFERENCE])
        references = np.frombuffer(base64.b64decode(stored["float32"]), dtype=np.float32).reshape(stored["shape"])
        return cls(session, references)

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]


class _ImageTower(torch.nn.Module):
    """Encoder.image_features as a module: what the tracer records."""

    def __init__(self, encoder):
        super().__init__()
        self.model, self.encoder = encoder.model, encoder

    def forward(self, pixel_values):
        return self.encoder.image_features({"pixel_values": pixel_values})

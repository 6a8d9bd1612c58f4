"""Objects: the one crop-with-context function, request boxes checked, and the object index stored beside the images."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from .errors import ArtifactError, QueryError
from .manifest import OBJECTS_INDEX, OBJECTS_META, Manifest, verify_files

# A box is kept when its shorter side is at least this many pixels of the original image: COCO's own "small" objects
# are those under 32 x 32 px, and a crop that small is blown up ~8x to the model's input, mostly blur (decision 0029).
MIN_BOX_SIDE = 32
# Context around a box, as a fraction of the box's width and height added on each side (clamped to the image):
# measured on the shapes world (docs/decisions/0029-object-index.md, benchmarks/results/object_context.md).
CONTEXT = 0.1
OBJECT_COLUMNS = ["image_row", "image_id", "x0", "y0", "x1", "y1", "category"]

Box = tuple[float, float, float, float]


def context_box(box: Box, width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """`box` [x0, y0, x1, y1] grown by `context` x its width and height on each side, clamped to a width x height
    image, in whole pixels (rounded outward) and never empty."""
    x0, y0, x1, y1 = box
    grow_x, grow_y = (x1 - x0) * context, (y1 - y0) * context
    left = min(max(0, math.floor(x0 - grow_x)), width - 1)
    top = min(max(0, math.floor(y0 - grow_y)), height - 1)
    right = max(min(width, math.ceil(x1 + grow_x)), left + 1)
    bottom = max(min(height, math.ceil(y1 + grow_y)), top + 1)
    return left, top, right, bottom


def crop_with_context(image: Image.Image, box: Box, context: float, original_size: tuple[int, int] | None = None
                      ) -> Image.Image:
    """The region of `image` the model sees for an object: the box (in the pixels of the original image, whose size
    is `original_size` when `image` was decoded smaller, e.g. by JPEG draft mode) with `context` around it. The
    builder's index crops and the Space's region searches both come through here, so they meet in one space."""
    width, height = original_size or image.size
    scale_x, scale_y = image.width / width, image.height / height
    scaled = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
    return image.crop(context_box(scaled, image.width, image.height, context))


def parse_box(value, width: int, height: int) -> Box:
    """A request's box: a JSON list (or a list) [x0, y0, x1, y1] in the picture's pixels, inside a width x height
    picture and not empty; otherwise a QueryError with a sentence for the caller."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except ValueError:
            raise QueryError("The box must be a JSON list of four numbers [x0, y0, x1, y1] in the picture's "
                             "pixels, e.g. [10, 20, 110, 90].") from None
    if value is None:
        raise QueryError("Please give a box [x0, y0, x1, y1] around the part of the picture to search for.")
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise QueryError("The box must be a JSON list of four numbers [x0, y0, x1, y1] in the picture's pixels, "
                         "e.g. [10, 20, 110, 90].")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 <= x0 or y1 <= y0:
        raise QueryError(f"The box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is empty or inverted: x1 must be greater than "
                         "x0 and y1 greater than y0.")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise QueryError(f"The box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] reaches outside the picture, which is "
                         f"{width}x{height} pixels.")
    return x0, y0, x1, y1


@dataclass
class ObjectRow:
    row: int
    image_row: int  # the gallery row of the image the object is in
    image_id: int
    box: list[float]  # [x0, y0, x1, y1] in the original image's pixels
    category: str


class ObjectIndex:
    """The object index of a build: FAISS over one vector per kept instance box, and per row its image and box."""

    def __init__(self, index: faiss.Index, table):
        self.index = index
        self._columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in OBJECT_COLUMNS}

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def open(cls, folder: Path, manifest: Manifest, *, verify: bool = True, stamp_dir: Path | None = None
             ) -> ObjectIndex:
        """Verify (sha256, as every artifact) and load the object index the manifest lists in `folder`."""
        info = manifest.objects
        if info is None:
            raise ArtifactError(f"{folder}: this build has no object index; rebuild it without --objects none.")
        if verify:
            verify_files(folder, manifest, stamp_dir, names=[OBJECTS_INDEX, OBJECTS_META])
        try:
            index = faiss.read_index(str(Path(folder) / OBJECTS_INDEX))
            if info.index.search_params:
                faiss.ParameterSpace().set_index_parameters(index, info.index.search_params)
            table = pq.read_table(Path(folder) / OBJECTS_META, columns=OBJECT_COLUMNS)
        except (RuntimeError, OSError, ValueError) as error:
            raise ArtifactError(f"The object index in {folder} could not be read ({error}); rebuild it.") from None
        if not index.ntotal == table.num_rows == info.count:
            raise ArtifactError(f"{folder}: the object index ({index.ntotal}) and its rows ({table.num_rows}) disagree "
                                f"with the manifest ({info.count}); rebuild the artifacts.")
        return cls(index, table)

    def nearest(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k object rows nearest to one unit query vector: (scores, rows), best first."""
        faiss.omp_set_num_threads(1)  # as Gallery.nearest: one query per calling thread
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.index.d)
        scores, rows = self.index.search(query, min(k, len(self)))
        found = rows[0] >= 0
        return scores[0][found], rows[0][found]

    def rows(self, indices: list[int]) -> list[ObjectRow]:
        c = self._columns
        return [ObjectRow(row=int(i), image_row=int(c["image_row"][i]), image_id=int(c["image_id"][i]),
                          box=[round(float(c[n][i]), 1) for n in ("x0", "y0", "x1", "y1")],
                          category=str(c["category"][i])) for i in indices]

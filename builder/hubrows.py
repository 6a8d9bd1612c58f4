"""The rows of a Hub COCO parquet repo: which columns hold ids, captions, urls, categories and the image."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SourceError
from .sources import Record, coco_box

ID_COLUMNS = ("image_id", "id", "cocoid")
CAPTION_COLUMNS = ("captions", "sentences", "caption", "text", "answer")
URL_COLUMNS = ("coco_url", "url", "flickr_url")
CATEGORY_FIELDS = ("category_name", "category")
BOX_FIELD = "bbox"  # COCO's [x, y, w, h] per instance, beside category_name in BrandonLSX/coco-2017's annotations


def find_layout(metadata, repo_id: str) -> dict:
    """Which columns to read from a shard (pyarrow FileMetaData): ids, names, sizes, captions, urls, categories,
    and the image (its column chunk number, for sizes from the footer)."""
    import datasets  # lazy: datasets takes ~1.3 s to import; only a Hub COCO source reads its schema

    schema = metadata.schema.to_arrow_schema()
    try:
        features = datasets.Features.from_arrow_schema(schema)
    except (ValueError, TypeError, KeyError):
        features = None
    image = next((name for name, feature in (features or {}).items() if isinstance(feature, datasets.Image)),
                 None)
    if image is None:  # plain parquet: a struct with a binary `bytes` field
        image = next((f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes")
                      >= 0 and pa.types.is_binary(f.type.field("bytes").type)), None)
    if image is None:
        raise SourceError(f"--hf-images {repo_id}: has no Image column; pass a dataset repo that holds the images.")
    names = schema.names
    id_column = next((c for c in ID_COLUMNS if c in names), None)
    if id_column is None:
        raise SourceError("--hf-images: rows have no image_id/id column to join captions and show ids.")
    columns = [id_column] + [c for c in ("file_name", "width", "height", *CAPTION_COLUMNS, *URL_COLUMNS)
                             if c in names and c != id_column]
    for name in ("annotations", "objects"):
        if name in names:
            kind = schema.field(name).type
            if pa.types.is_struct(kind):
                columns += [f"{name}.{f}" for f in (*CATEGORY_FIELDS, BOX_FIELD, "iscrowd")
                            if kind.get_field_index(f) >= 0]
            else:
                columns.append(name)
    leaf = f"{image}.bytes"
    chunk = next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path == leaf)
    return {"image": leaf, "chunk": chunk, "id": id_column, "columns": columns, "features": features}


def make_record(value: dict, layout: dict, split: str, locator: int, captions: dict[int, dict]) -> Record:
    """One listed row as a Record, its captions and url joined by image id from the captions repo when it has them."""
    image_id = value.get(layout["id"])
    if image_id is None:
        raise SourceError("--hf-images: rows have no image_id/id column to join captions and show ids.")
    joined = captions.get(int(image_id), {})
    own = first(value, CAPTION_COLUMNS) or []
    return Record(
        image_id=int(image_id), split=split, file_name=str(value.get("file_name") or f"{image_id}.jpg"),
        locator=locator, width=int(value.get("width") or 0), height=int(value.get("height") or 0),
        captions=joined.get("captions") or ([own] if isinstance(own, str) else list(own)),
        categories=categories(value, layout["features"]),
        url=joined.get("url") or first(value, URL_COLUMNS) or "",
        boxes=instance_boxes(value),
    )


def instance_boxes(row: dict) -> list[list]:
    """[x0, y0, x1, y1, category] per instance of a struct-of-lists `annotations` column with `bbox` and
    `category_name` (BrandonLSX/coco-2017's layout); none for other layouts."""
    value = row.get("annotations")
    if not isinstance(value, dict) or not value.get(BOX_FIELD) or not value.get("category_name"):
        return []
    crowds = value.get("iscrowd") or [0] * len(value[BOX_FIELD])
    return [[*box, str(name)] for bbox, name, crowd in zip(value[BOX_FIELD], value["category_name"], crowds)
            if name is not None and not crowd and (box := coco_box(bbox))]  # a crowd box holds no one thing


def caption_lookup(repo, paths: list[str]) -> dict[int, dict]:
    """{image id: {"captions", "url"}} from the captions repo's files of one split (read whole, they are small)."""

    lookup: dict[int, dict] = {}
    for path in paths:
        local = repo.path(path)
        try:
            handle = pq.ParquetFile(local)
            names = handle.schema_arrow.names
            wanted = [c for c in (*ID_COLUMNS, *CAPTION_COLUMNS, *URL_COLUMNS) if c in names]
            rows = handle.read(columns=wanted).to_pylist()
        except (OSError, ValueError, pa.ArrowException) as error:
            raise SourceError(f"--hf-captions {repo.repo_id}: {path} could not be read "
                              f"({str(error).splitlines()[0]}).") from None
        for row in rows:
            image_id = first(row, ID_COLUMNS)
            if image_id is None:
                continue
            captions = first(row, CAPTION_COLUMNS) or []
            lookup[int(image_id)] = {
                "captions": [captions] if isinstance(captions, str) else [str(c) for c in captions],
                "url": first(row, URL_COLUMNS) or "",
            }
    return lookup


def first(row: dict, names: tuple[str, ...]):
    return next((row[name] for name in names if row.get(name) not in (None, "", [])), None)


def categories(row: dict, features) -> list[str]:
    """Category names from the layouts seen on the Hub: annotations.category_name (BrandonLSX/coco-2017, a struct of
    lists), objects.category (ClassLabel ids), or a list of such structs."""
    names: set[str] = set()
    for column in ("annotations", "objects"):
        value = row.get(column)
        items = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("category_name") is not None:
                found = item["category_name"]
                names.update(str(n) for n in (found if isinstance(found, list) else [found]))
            elif item.get("category") is not None:
                found = item["category"]
                label = class_label(features, column)
                names.update(label.int2str(int(c)) if label is not None else str(c)
                             for c in (found if isinstance(found, list) else [found]))
    return sorted(names)


def class_label(features, column: str):
    """The ClassLabel of `column`'s category field in the repo's datasets features, if it has one."""
    feature = (features or {}).get(column)
    for _ in range(3):  # List(...) / Sequence(...) / dict layers
        if isinstance(feature, dict):
            feature = feature.get("category")
        elif hasattr(feature, "feature"):
            feature = feature.feature
        if hasattr(feature, "int2str"):
            return feature
    return None

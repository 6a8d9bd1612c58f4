"""Row-level reads of one byte-array column (images) from parquet files, by page, through any `fetch(offset, size)`.

pyarrow reads a whole column chunk to return one value, and a row group of COCO images is 16-100 MB. This module
reads only the page (<= ~1 MB) that holds a row: it finds the page from the column's offset index (written by
`datasets` >= 4 with `write_page_index=True`) or, without one, by walking the page headers, then decodes the page
itself (PLAIN or dictionary values, RLE/bit-packed definition levels, data pages v1 and v2, any codec pyarrow
knows). The footer and page headers are Thrift compact structs, decoded by the small reader below. Anything else
(repeated columns, other encodings) raises `Unsupported`, and callers fall back to pyarrow's whole-chunk read.
"""

from __future__ import annotations

import bisect
import io
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

MAGIC = b"PAR1"
CODECS = {0: None, 1: "snappy", 2: "gzip", 4: "brotli", 6: "zstd", 7: "lz4_raw"}  # 3 LZO, 5 LZ4 (hadoop): no
PLAIN, PLAIN_DICTIONARY, RLE, RLE_DICTIONARY = 0, 2, 3, 8
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3

Fetch = Callable[[int, int], bytes]  # (offset, size) -> exactly those bytes of the file


class Unsupported(ValueError):
    """A parquet feature this reader does not decode; the caller reads the chunk with pyarrow instead."""


class FetchFile(io.RawIOBase):
    """A read-only file over `fetch(offset, size)`, for pyarrow: each read is one fetch (one Range request)."""

    def __init__(self, fetch: Fetch, size: int):
        super().__init__()
        self._fetch, self._size, self._pos = fetch, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        data = self._fetch(self._pos, end - self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


# --- Thrift compact protocol (read side only): structs become {field id: value} ----------------------------------
class _Short(Exception):
    """The buffer ended inside a struct: fetch more bytes and parse again."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise _Short
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf: bytes, pos: int, kind: int):
    if kind in (1, 2):  # booleans inside lists/maps take a byte; as fields the type carries the value
        raise AssertionError("booleans are handled by the caller")
    if kind == 3:
        if pos >= len(buf):
            raise _Short
        return struct.unpack_from("b", buf, pos)[0], pos + 1
    if kind in (4, 5, 6):
        n, pos = _varint(buf, pos)
        return _zigzag(n), pos
    if kind == 7:
        if pos + 8 > len(buf):
            raise _Short
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if kind == 8:
        size, pos = _varint(buf, pos)
        if pos + size > len(buf):
            raise _Short
        return bytes(buf[pos:pos + size]), pos + size
    if kind in (9, 10):
        if pos >= len(buf):
            raise _Short
        header = buf[pos]
        pos += 1
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        items = []
        for _ in range(size):
            if element in (1, 2):
                if pos >= len(buf):
                    raise _Short
                items.append(buf[pos] == 1)
                pos += 1
            else:
                item, pos = _value(buf, pos, element)
                items.append(item)
        return items, pos
    if kind == 11:
        size, pos = _varint(buf, pos)
        if not size:
            return {}, pos
        if pos >= len(buf):
            raise _Short
        types = buf[pos]
        pos += 1
        out = {}
        for _ in range(size):
            key, pos = _value(buf, pos, types >> 4)
            out[key], pos = _value(buf, pos, types & 0x0F)
        return out, pos
    if kind == 12:
        return thrift_struct(buf, pos)
    raise Unsupported(f"thrift type {kind}")


def thrift_struct(buf: bytes, pos: int = 0) -> tuple[dict, int]:
    """One compact-protocol struct starting at `pos`: ({field id: value}, position after it)."""
    out: dict[int, object] = {}
    last = 0
    while True:
        if pos >= len(buf):
            raise _Short
        header = buf[pos]
        pos += 1
        if header == 0:
            return out, pos
        kind, delta = header & 0x0F, header >> 4
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(buf, pos)
            fid = _zigzag(raw)
        last = fid
        if kind in (1, 2):
            out[fid] = kind == 1
        else:
            out[fid], pos = _value(buf, pos, kind)


# --- footer --------------------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """Where one column chunk lives and how to decode it (from the footer)."""

    codec: int
    start: int  # first byte (dictionary page if any)
    data_offset: int  # first data page
    size: int  # total compressed bytes of the chunk
    num_values: int
    offset_index: tuple[int, int] | None  # (offset, length) of its OffsetIndex, when the writer wrote one


@dataclass
class Footer:
    raw: bytes  # FileMetaData bytes (without length and magic)
    num_rows: int
    row_group_rows: list[int]
    chunks: dict[tuple[str, ...], list[Chunk]] = field(default_factory=dict)  # leaf path -> one Chunk per row group

    def arrow_metadata(self):
        """The same footer as pyarrow's FileMetaData, so pyarrow never fetches it again."""
        import pyarrow.parquet as pq

        blob = MAGIC + self.raw + struct.pack("<I", len(self.raw)) + MAGIC
        return pq.read_metadata(pa.BufferReader(blob))


def read_footer(fetch: Fetch, file_size: int, guess: int | None = None) -> tuple[Footer, int]:
    """The footer of a parquet file of `file_size` bytes, in one fetch when it fits in `guess` (default: 1/16 of
    the file, between 1 KB and 64 KB); returns (footer, bytes fetched)."""
    if file_size < 12:
        raise Unsupported("too small to be a parquet file")
    guess = guess or max(1024, min(64 * 1024, file_size // 16))
    tail_size = min(guess, file_size)
    tail = fetch(file_size - tail_size, tail_size)
    fetched = len(tail)
    if tail[-4:] != MAGIC:
        raise Unsupported("not a parquet file (no PAR1 at the end)")
    length = struct.unpack("<I", tail[-8:-4])[0]
    if length + 8 > file_size:
        raise Unsupported("corrupt parquet footer length")
    if length + 8 > len(tail):  # fetch only the part of the footer the first read missed
        head = fetch(file_size - length - 8, length + 8 - len(tail))
        fetched += len(head)
        tail = head + tail
    raw = tail[len(tail) - 8 - length:len(tail) - 8]
    return parse_footer(raw), fetched


def parse_footer(raw: bytes) -> Footer:
    try:
        meta, _ = thrift_struct(raw)
    except _Short:
        raise Unsupported("truncated parquet footer") from None
    groups = meta.get(4) or []
    footer = Footer(raw=raw, num_rows=int(meta.get(3, 0)), row_group_rows=[int(g.get(3, 0)) for g in groups])
    for group in groups:
        for column in group.get(1) or []:
            info = column.get(3)
            if info is None:
                raise Unsupported("encrypted or external column chunks")
            path = tuple(p.decode() for p in info.get(3, []))
            data_offset = int(info[9])
            dictionary = info.get(11)
            start = min(int(dictionary), data_offset) if dictionary is not None and dictionary > 0 else data_offset
            index = (int(column[4]), int(column[5])) if column.get(4) is not None and column.get(5) else None
            footer.chunks.setdefault(path, []).append(Chunk(
                codec=int(info[4]), start=start, data_offset=data_offset, size=int(info[7]),
                num_values=int(info[5]), offset_index=index))
    return footer


# --- pages -----------------------------------------------------------------------------------------------------------
@dataclass
class Page:
    offset: int
    size: int  # header + body
    first_row: int


def offset_index_pages(data: bytes) -> list[Page]:
    try:
        index, _ = thrift_struct(data)
    except _Short:
        raise Unsupported("truncated offset index") from None
    return [Page(int(p[1]), int(p[2]), int(p[3])) for p in index.get(1, [])]


def _header(fetch: Fetch, offset: int, limit: int, first: int = 1024) -> tuple[dict, int]:
    """A page header at `offset`: (header, header size); fetches more when it is longer than `first`."""
    size = min(first, limit)
    while True:
        data = fetch(offset, size)
        try:
            header, end = thrift_struct(data)
            return header, end
        except _Short:
            if size >= limit:
                raise Unsupported("truncated page header") from None
            size = min(size * 4, limit)


class ByteArrayColumn:
    """Values of one non-repeated BYTE_ARRAY leaf (e.g. image.bytes) by (row group, row), one page at a time.

    `fetch` reads the file; `max_def` is the leaf's maximum definition level (pyarrow's
    `schema.column(i).max_definition_level`). Decoded pages and page tables are kept in small LRU caches, so reading
    the rows of a page in turn decodes it once.
    """

    def __init__(self, fetch: Fetch, chunks: list[Chunk], max_def: int, max_rep: int = 0, *, pages_cached: int = 4):
        if max_rep:
            raise Unsupported("repeated column")
        self.fetch = fetch
        self.chunks = chunks
        self.max_def = max_def
        self._tables: dict[int, tuple[Page | None, list[Page]]] = {}
        self._dictionaries: OrderedDict[int, list[bytes]] = OrderedDict()  # a dictionary page can hold a whole
        # row group's images (older writers), so only the last two are kept
        self._pages: OrderedDict[tuple[int, int], list[bytes | None]] = OrderedDict()
        self._pages_cached = pages_cached

    def pages(self, group: int) -> tuple[Page | None, list[Page]]:
        """(dictionary page or None, data pages) of a row group's chunk."""
        if group not in self._tables:
            chunk = self.chunks[group]
            if chunk.offset_index is not None:
                data = offset_index_pages(self.fetch(*chunk.offset_index))
                dictionary = Page(chunk.start, data[0].offset - chunk.start, 0) if data and \
                    data[0].offset > chunk.start else None
                self._tables[group] = (dictionary, data)
            else:
                self._tables[group] = self._walk(chunk)
        return self._tables[group]

    def _walk(self, chunk: Chunk) -> tuple[Page | None, list[Page]]:
        """Without an offset index: read each page header in turn (only headers; bodies are skipped)."""
        dictionary, data, offset, row, end = None, [], chunk.start, 0, chunk.start + chunk.size
        while offset < end and row < chunk.num_values:
            header, length = _header(self.fetch, offset, end - offset)
            page = Page(offset, length + int(header[3]), row)
            kind = header[1]
            if kind == DICTIONARY_PAGE:
                dictionary = page
            elif kind == DATA_PAGE:
                data.append(page)
                row += int(header[5][1])
            elif kind == DATA_PAGE_V2:
                data.append(page)
                row += int(header[8][3])
            offset += page.size
        return dictionary, data

    def page_for(self, group: int, row: int) -> tuple[int, Page]:
        _, data = self.pages(group)
        number = bisect.bisect_right([page.first_row for page in data], row) - 1
        if number < 0:
            raise IndexError(f"row {row} is not in row group {group}")
        return number, data[number]

    def value(self, group: int, row: int) -> bytes | None:
        """The value of `row` (counted from the start of row group `group`), None when null."""
        number, page = self.page_for(group, row)
        key = (group, number)
        values = self._pages.get(key)
        if values is None:
            values = self._decode(group, page)
            self._pages[key] = values
            while len(self._pages) > self._pages_cached:
                self._pages.popitem(last=False)
        else:
            self._pages.move_to_end(key)
        position = row - page.first_row
        if position >= len(values):
            raise IndexError(f"row {row} is past its page in row group {group}")
        return values[position]

    # -- decoding ------------------------------------------------------------------------------------------------
    def _decode(self, group: int, page: Page) -> list[bytes | None]:
        chunk = self.chunks[group]
        blob = self.fetch(page.offset, page.size)
        header, start = thrift_struct(blob)
        body = blob[start:start + int(header[3])]
        kind, uncompressed = header[1], int(header[2])
        if kind == DATA_PAGE:
            info = header[5]
            count, encoding = int(info[1]), int(info[2])
            raw = _decompress(chunk.codec, body, uncompressed)
            pos = 0
            levels = None
            if self.max_def:
                if info.get(3, RLE) != RLE:
                    raise Unsupported(f"definition levels encoded with {info.get(3)}")
                length = struct.unpack_from("<I", raw, 0)[0]
                levels = _rle_hybrid(raw[4:4 + length], _bit_width(self.max_def), count)
                pos = 4 + length
            values = raw[pos:]
        elif kind == DATA_PAGE_V2:
            info = header[8]
            count, encoding = int(info[1]), int(info[4])
            rep, dfn = int(info.get(6, 0)), int(info.get(5, 0))
            if rep:
                raise Unsupported("repeated column")
            levels = _rle_hybrid(body[:dfn], _bit_width(self.max_def), count) if self.max_def else None
            values = body[dfn:]
            if info.get(7, True):
                values = _decompress(chunk.codec, values, uncompressed - dfn)
        else:
            raise Unsupported(f"page type {kind} where a data page was expected")
        present = count if levels is None else sum(1 for level in levels if level == self.max_def)
        if encoding == PLAIN:
            decoded = _plain(values, present)
        elif encoding in (PLAIN_DICTIONARY, RLE_DICTIONARY):
            dictionary = self._dictionary(group)
            indices = _rle_hybrid(values[1:], values[0], present) if present else []
            decoded = [dictionary[i] for i in indices]
        else:
            raise Unsupported(f"value encoding {encoding}")
        if levels is None:
            return decoded
        it = iter(decoded)
        return [next(it) if level == self.max_def else None for level in levels]

    def _dictionary(self, group: int) -> list[bytes]:
        if group in self._dictionaries:
            self._dictionaries.move_to_end(group)
        else:
            dictionary, _ = self.pages(group)
            if dictionary is None:
                raise Unsupported("dictionary-encoded page without a dictionary page")
            blob = self.fetch(dictionary.offset, dictionary.size)
            header, start = thrift_struct(blob)
            if header[1] != DICTIONARY_PAGE:
                raise Unsupported("the chunk does not start with its dictionary page")
            info = header[7]
            if int(info.get(2, PLAIN)) not in (PLAIN, PLAIN_DICTIONARY):
                raise Unsupported(f"dictionary encoding {info.get(2)}")
            raw = _decompress(self.chunks[group].codec, blob[start:start + int(header[3])], int(header[2]))
            self._dictionaries[group] = _plain(raw, int(info[1]))
            while len(self._dictionaries) > 2:
                self._dictionaries.popitem(last=False)
        return self._dictionaries[group]


def _decompress(codec: int, data: bytes, size: int) -> bytes:
    if codec not in CODECS:
        raise Unsupported(f"compression codec {codec}")
    name = CODECS[codec]
    if name is None:
        return bytes(data)
    return pa.decompress(data, decompressed_size=size, codec=name, asbytes=True)


def _plain(data: bytes, count: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(count):
        length = struct.unpack_from("<I", data, pos)[0]
        out.append(bytes(data[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


def _bit_width(max_value: int) -> int:
    return max_value.bit_length()


def _rle_hybrid(data: bytes, width: int, count: int) -> list[int]:
    """Parquet's RLE / bit-packed hybrid encoding (levels and dictionary indices)."""
    out: list[int] = []
    pos, size = 0, (width + 7) // 8
    while len(out) < count:
        header, pos = _varint(data, pos)
        if header & 1:  # bit-packed: (header >> 1) groups of 8 values, little-endian bit order
            groups = header >> 1
            nbytes = groups * width
            bits = int.from_bytes(data[pos:pos + nbytes], "little")
            mask = (1 << width) - 1
            out.extend((bits >> (i * width)) & mask for i in range(groups * 8))
            pos += nbytes
        else:
            value = int.from_bytes(data[pos:pos + size], "little")
            out.extend([value] * (header >> 1))
            pos += size
    return out[:count]

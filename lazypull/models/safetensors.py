"""Tensors out of a safetensors file in an image or artifact, fetching only the ones asked for.

The format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
whose offsets count from the byte after the header, then the tensors' bytes. So the header
is read first, then only the byte ranges of the tensors wanted, adjacent ones in one read;
each range comes through the image's verified reader (chunk digests for raw blobs).
"""

from __future__ import annotations

import importlib
import json
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lazypull.errors import FormatError

if TYPE_CHECKING:
    import numpy as np

    from lazypull.imagefs import ImageFS

MAX_HEADER = 100 << 20  # the format's own limit
MAX_COALESCED = 64 << 20  # one read never larger than this
PARALLEL_READS = 8

# safetensors dtype -> numpy dtype name (little-endian); bf16/fp8 need ml_dtypes
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # the file's name for it: "F32", "BF16", ...
    shape: tuple[int, ...]
    start: int  # file offsets of its bytes: [start, end)
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    import numpy as np

    if dtype in _DTYPES:
        return np.dtype(_DTYPES[dtype])
    if dtype in _ML_DTYPES:
        try:
            ml_dtypes = importlib.import_module("ml_dtypes")  # optional: numpy has no bfloat16 of its own
        except ImportError:
            raise FormatError(f"safetensors dtype {dtype} needs the ml_dtypes package for numpy") from None
        t: np.dtype[Any] = np.dtype(getattr(ml_dtypes, _ML_DTYPES[dtype]))
        return t
    raise FormatError(f"unsupported safetensors dtype {dtype!r}")


def parse_header(head: bytes, file_size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors by name, ``__metadata__``) from the file's first 8 + N bytes; every offset is
    checked against the file's size and the tensor's shape and dtype."""
    n = int.from_bytes(head[:8], "little")
    base = 8 + n
    try:
        obj = json.loads(head[8:base])
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError("safetensors header is not a JSON object")
    meta = obj.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise FormatError("safetensors __metadata__ is not an object")
    tensors = {}
    for name, t in obj.items():
        try:
            dtype, shape, (begin, end) = str(t["dtype"]), tuple(int(x) for x in t["shape"]), t["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"safetensors tensor {name!r}: malformed entry ({e})") from None
        itemsize = numpy_dtype(dtype).itemsize
        if not 0 <= begin <= end or base + end > file_size or end - begin != math.prod(shape) * itemsize:
            raise FormatError(f"safetensors tensor {name!r}: offsets {begin}..{end} do not fit {dtype}{list(shape)}")
        tensors[name] = TensorInfo(name, dtype, shape, base + begin, base + end)
    return tensors, {str(k): str(v) for k, v in meta.items()}


def coalesce(infos: Iterable[TensorInfo]) -> list[list[TensorInfo]]:
    """Tensors grouped so each group's bytes are one contiguous range (one read)."""
    groups: list[list[TensorInfo]] = []
    for t in sorted(infos, key=lambda t: t.start):
        g = groups[-1] if groups else None
        if g is not None and t.start == g[-1].end and t.end - g[0].start <= MAX_COALESCED:
            g.append(t)
        else:
            groups.append([t])
    return groups


class LazyTensors(Mapping[str, "np.ndarray[Any, Any]"]):
    """name -> read-only numpy array, each tensor's bytes fetched on first access (or all
    asked ones at once, coalesced, when the mapping was made with names)."""

    def __init__(self, img: ImageFS, path: str, names: Iterable[str] | None = None, *, owns: bool = False) -> None:
        self._img = img
        self._path = path
        self._owns = owns
        size = img.stat(path).size
        if size < 8:
            raise FormatError(f"{path}: {size} bytes is not a safetensors file")
        # The length, then the header: chunk by chunk, nothing past the header's last chunk.
        n = int.from_bytes(img.pread(path, 0, 8), "little")
        if n > MAX_HEADER or 8 + n > size:
            raise FormatError(f"{path}: safetensors header of {n} bytes does not fit the file")
        head = n.to_bytes(8, "little") + img.pread(path, 8, n)
        self.header_size = 8 + n
        infos, self.metadata = parse_header(head, size)
        if names is not None:
            wanted = list(names)
            missing = [x for x in wanted if x not in infos]
            if missing:
                raise KeyError(f"{path}: no tensor {missing[0]!r}")
            infos = {x: infos[x] for x in wanted}
        self.infos: dict[str, TensorInfo] = infos
        self._arrays: dict[str, np.ndarray[Any, Any]] = {}
        self._lock = threading.Lock()
        if names is not None:
            self.load(self.infos)

    @property
    def image(self) -> ImageFS:
        """The image (or artifact) the file is read from: ``.stats()`` says what was fetched."""
        return self._img

    def load(self, names: Iterable[str]) -> None:
        """Fetch the tensors *names* now: adjacent ones in one read, reads in parallel."""
        todo = [self.infos[x] for x in names if x not in self._arrays]
        groups = coalesce(todo)
        if not groups:
            return
        with ThreadPoolExecutor(min(PARALLEL_READS, len(groups))) as pool:
            for g, data in zip(groups, pool.map(self._read_group, groups), strict=True):
                for t in g:
                    arr = self._array(t, data[t.start - g[0].start : t.end - g[0].start])
                    with self._lock:
                        self._arrays.setdefault(t.name, arr)

    def _read_group(self, g: list[TensorInfo]) -> bytes:
        start, end = g[0].start, g[-1].end
        data = self._img.pread(self._path, start, end - start)
        if len(data) != end - start:
            raise FormatError(f"{self._path}: short read of tensors at {start}")
        return data

    def _array(self, t: TensorInfo, data: bytes) -> np.ndarray[Any, Any]:
        import numpy as np

        return np.frombuffer(data, dtype=numpy_dtype(t.dtype)).reshape(t.shape)

    def __getitem__(self, name: str) -> np.ndarray[Any, Any]:
        if name not in self.infos:
            raise KeyError(name)
        if name not in self._arrays:
            self.load([name])
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def close(self) -> None:
        """Close the image when the mapping opened it (load_tensors with a reference)."""
        if self._owns:
            self._img.close()

    def __enter__(self) -> LazyTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

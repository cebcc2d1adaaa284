"""A pure-Python reader of a GGUF file's header: metadata and tensor shapes, checked before llama.cpp sees the file."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias

from ..errors import LoadError

__all__ = ["GgufHeader", "GgufValue", "TensorInfo", "read_gguf_header"]

GgufValue: TypeAlias = "int | float | bool | str | list[GgufValue]"

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp rejects more
_MAX_NESTING = 8  # arrays of arrays: deep enough for any real file, shallow enough for Python's stack
_CHUNK = 64 * 1024  # the header is read in chunks this size, so at most this much tensor data is read past it

_STRING = 8
_ARRAY = 9
# GGUF value type -> struct code; the element size is struct's standard size for that code
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_SCALAR_STRUCTS = {vtype: struct.Struct("<" + code) for vtype, code in _SCALARS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = 2**63 - 1

# ggml type id -> (elements per block, bytes per block), as in ggml.c; ids missing here were removed from ggml
# or are newer than this table, and their tensors are not bounds-checked
_GGML_BLOCKS = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it; ``shape`` is ggml's ``ne`` (fastest-varying dimension first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to GgufHeader.data_offset, as stored in the file


@dataclass(frozen=True)
class GgufHeader:
    """Everything before the tensor data; ``data_offset`` is where that data starts in the file."""

    version: int
    metadata: dict[str, GgufValue]
    tensors: dict[str, TensorInfo]
    data_offset: int


def read_gguf_header(path: str | os.PathLike[str]) -> GgufHeader:
    """Parse the header with the limits llama.cpp applies, so a file rejected here would not load there either.

    Raises :class:`~oxillama_py.errors.LoadError` for anything but a well-formed file; corrupt counts and lengths
    are checked against the file size before anything is allocated for them.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LoadError(f"GGUF file not found: {path}") from None
    except OSError as exc:
        raise LoadError(f"cannot read GGUF file {path}: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise LoadError(f"GGUF path is not a file: {path}")
    try:
        with path.open("rb") as handle:
            return _Parser(handle, os.fstat(handle.fileno()).st_size, path).header()
    except OSError as exc:
        raise LoadError(f"cannot read GGUF file {path}: {exc}") from exc


class _Parser:
    """Sequential reads from a buffer refilled in chunks: one ``read`` per value would make a vocabulary slow."""

    def __init__(self, handle: BinaryIO, size: int, path: Path) -> None:
        self._handle = handle
        self._size = size
        self._path = path
        self._buf = b""
        self._pos = 0  # in _buf
        self._base = 0  # file offset of _buf[0]

    def header(self) -> GgufHeader:
        if self._size < 8:
            raise LoadError(f"not a GGUF file ({self._size} bytes, too short for a header): {self._path}")
        magic = self._take(4, "magic")
        if magic != _MAGIC:
            raise LoadError(f"not a GGUF file (magic {magic!r}, expected {_MAGIC!r}): {self._path}")
        version = self._u32("version")
        if version not in _VERSIONS:
            hint = ""
            if int.from_bytes(version.to_bytes(4, "little"), "big") in _VERSIONS:
                hint = " (a big-endian file; only little-endian GGUF is supported)"
            raise LoadError(f"unsupported GGUF version {version} in {self._path}, expected 2 or 3{hint}")
        n_tensors = self._u64("tensor count")
        n_kv = self._u64("metadata count")
        # smallest possible entries: a 1-byte key with a 1-byte value; a tensor with an empty name and no dims
        if n_kv * 14 + n_tensors * 24 > self._remaining():
            raise self._too_long(f"{n_kv} metadata entries and {n_tensors} tensors")

        metadata: dict[str, GgufValue] = {}
        for _ in range(n_kv):
            key = self._string("metadata key")
            if not key:
                raise self._corrupt("empty metadata key")
            if key in metadata:
                raise self._corrupt(f"duplicate metadata key {key!r}")
            vtype = self._u32(f"type of {key!r}")
            if key == "general.alignment" and vtype != 4:
                raise self._corrupt(f"general.alignment has value type {vtype}, expected 4 (uint32)")
            metadata[key] = self._value(vtype, key, 0)
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        assert isinstance(alignment, int)
        if alignment <= 0 or alignment & (alignment - 1):
            raise self._corrupt(f"general.alignment {alignment} is not a power of two")

        tensors: dict[str, TensorInfo] = {}
        for _ in range(n_tensors):
            tensor = self._tensor_info()
            if tensor.name in tensors:
                raise self._corrupt(f"duplicate tensor name {tensor.name!r}")
            tensors[tensor.name] = tensor

        data_offset = self._offset()
        if tensors:  # llama.cpp pads only when there is data to align
            data_offset += -data_offset % alignment
        for tensor in tensors.values():
            self._check_data(tensor, data_offset)
        return GgufHeader(version=version, metadata=metadata, tensors=tensors, data_offset=data_offset)

    def _tensor_info(self) -> TensorInfo:
        name = self._string("tensor name")
        n_dims = self._u32(f"dimension count of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise self._corrupt(f"tensor {name!r} has {n_dims} dimensions, at most {_MAX_DIMS} are allowed")
        shape = struct.unpack_from(f"<{n_dims}Q", self._take(8 * n_dims, f"shape of tensor {name!r}"))
        elements = 1
        for dim in shape:
            elements *= dim
        if any(dim > _INT64_MAX for dim in shape) or elements > _INT64_MAX:
            raise self._corrupt(f"tensor {name!r} has an impossible shape {shape}")
        ggml_type = self._u32(f"type of tensor {name!r}")
        offset = self._u64(f"data offset of tensor {name!r}")
        return TensorInfo(name=name, shape=shape, ggml_type=ggml_type, offset=offset)

    def _check_data(self, tensor: TensorInfo, data_offset: int) -> None:
        """A truncated download usually keeps its header intact: only the tensor extents tell."""
        block = _GGML_BLOCKS.get(tensor.ggml_type)
        if block is None:
            return
        per_block, block_bytes = block
        row = tensor.shape[0] if tensor.shape else 1
        if row % per_block:
            raise self._corrupt(
                f"tensor {tensor.name!r} has rows of {row}, not a multiple of its block size {per_block}"
            )
        elements = 1
        for dim in tensor.shape:
            elements *= dim
        end = data_offset + tensor.offset + elements // per_block * block_bytes
        if end > self._size:
            raise LoadError(
                f"truncated GGUF file {self._path}: tensor {tensor.name!r} ends at byte {end}, "
                f"the file has {self._size}"
            )

    def _value(self, vtype: int, key: str, depth: int) -> GgufValue:
        scalar = _SCALAR_STRUCTS.get(vtype)
        if scalar is not None:
            value: GgufValue = scalar.unpack(self._take(scalar.size, f"value of {key!r}"))[0]
            return value
        if vtype == _STRING:
            return self._string(f"value of {key!r}")
        if vtype != _ARRAY:
            raise self._corrupt(f"unknown value type {vtype} for key {key!r}")
        if depth >= _MAX_NESTING:
            raise self._corrupt(f"arrays nested more than {_MAX_NESTING} deep in {key!r}")
        etype = self._u32(f"element type of {key!r}")
        count = self._u64(f"length of {key!r}")
        code = _SCALARS.get(etype)
        if code is not None:
            nbytes = count * _SCALAR_STRUCTS[etype].size
            if nbytes > self._remaining():
                raise self._too_long(f"array {key!r} of {count} elements")
            return list(struct.unpack(f"<{count}{code}", self._take(nbytes, f"elements of {key!r}")))
        if etype == _STRING:
            if count * 8 > self._remaining():
                raise self._too_long(f"array {key!r} of {count} strings")
            return self._strings(count, f"element of {key!r}")
        if etype == _ARRAY:
            if count * 12 > self._remaining():
                raise self._too_long(f"array {key!r} of {count} arrays")
            return [self._value(_ARRAY, key, depth + 1) for _ in range(count)]
        raise self._corrupt(f"unknown element type {etype} in array {key!r}")

    def _strings(self, count: int, what: str) -> list[GgufValue]:
        """The vocabulary is most of the header: this loop stays on the buffer and refills only at its end."""
        out: list[GgufValue] = []
        append = out.append
        unpack_u64 = _U64.unpack_from
        for _ in range(count):
            buf, pos = self._buf, self._pos
            if pos + 8 <= len(buf):
                (length,) = unpack_u64(buf, pos)
                end = pos + 8 + length
                if end <= len(buf):
                    append(buf[pos + 8 : end].decode("utf-8", "replace"))
                    self._pos = end
                    continue
            append(self._string(what))
        return out

    def _string(self, what: str) -> str:
        length = self._u64(f"length of {what}")
        if length > self._remaining():
            raise self._too_long(f"{what} of {length} bytes")
        # llama.cpp does not validate UTF-8 either, so a stray byte must not make the file unreadable
        return self._take(length, what).decode("utf-8", "replace")

    def _u32(self, what: str) -> int:
        value: int = _U32.unpack(self._take(4, what))[0]
        return value

    def _u64(self, what: str) -> int:
        value: int = _U64.unpack(self._take(8, what))[0]
        return value

    def _take(self, n: int, what: str) -> bytes:
        pos = self._pos
        if pos + n > len(self._buf):
            self._fill(n, what)
            pos = self._pos
        self._pos = pos + n
        return self._buf[pos : pos + n]

    def _fill(self, n: int, what: str) -> None:
        if n > self._remaining():
            raise LoadError(
                f"truncated GGUF header in {self._path}: the {what} at byte {self._offset()} needs {n} bytes, "
                f"{self._remaining()} are left"
            )
        kept = self._buf[self._pos :]
        more = self._handle.read(max(n - len(kept), _CHUNK))
        self._base += self._pos
        self._buf = kept + more
        self._pos = 0
        if len(self._buf) < n:  # the file shrank while we read it
            raise LoadError(f"truncated GGUF header in {self._path}: the {what} at byte {self._offset()} is cut short")

    def _offset(self) -> int:
        return self._base + self._pos

    def _remaining(self) -> int:
        return self._size - self._offset()

    def _too_long(self, what: str) -> LoadError:
        """Checked before allocating: a corrupt count must not become a multi-gigabyte list."""
        return LoadError(
            f"truncated or corrupt GGUF header in {self._path}: {what} at byte {self._offset()} "
            f"cannot fit in the {self._remaining()} bytes left in the file"
        )

    def _corrupt(self, problem: str) -> LoadError:
        return LoadError(f"corrupt GGUF header in {self._path} (near byte {self._offset()}): {problem}")

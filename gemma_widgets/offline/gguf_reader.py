"""A GGUF file's metadata and tensors, read in a fraction of a second.

``gguf.GGUFReader`` builds a numpy view per field part: on Gemma's 262k-token vocabulary that is
about 12 s on two cores, paid again by every reader (transformers' loader makes several). This
reader walks the header once with :mod:`struct`, reads numeric arrays with one ``np.frombuffer``
each, and leaves the tensor data memory-mapped for ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, quants
from gguf.constants import GGML_QUANT_SIZES

#: GGUF value types (``GGUFValueType``): numeric ones as (struct format, numpy dtype).
_NUMERIC = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
            12: ("<d", "<f8")}
_STRING, _ARRAY = 8, 9
#: Unquantized tensor types (``GGMLQuantizationType`` F32, F16) and their numpy dtypes.
_FLOATS = {0: np.float32, 1: np.float16}


@dataclass(frozen=True)
class Tensor:
    """One tensor of the file: ``data`` is memory-mapped as ``gguf.GGUFReader`` gives it (float rows,
    or the bytes of each quantized row), which ``gguf.quants.dequantize`` takes as is."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]  # as torch numbers it: the GGUF's dimensions reversed
    data: np.ndarray

    def dequantize(self) -> np.ndarray:
        """The tensor as float32, in ``shape``."""
        return quants.dequantize(self.data, GGMLQuantizationType(self.ggml_type)).reshape(self.shape)


class GGUFFile:
    """The metadata (``fields``: key -> value, arrays as lists) and ``tensors`` of a GGUF file."""

    def __init__(self, path: str | Path):
        self._buffer = np.memmap(path, dtype=np.uint8, mode="r")
        self._view = memoryview(self._buffer)  # type: ignore[arg-type]
        self._at = 0
        if bytes(self._view[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        self._at = 4
        version, tensor_count, kv_count = self._unpack("<I"), self._unpack("<Q"), self._unpack("<Q")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        self.fields: dict[str, Any] = {}
        for _ in range(kv_count):
            key = self._string()
            self.fields[key] = self._value(self._unpack("<I"))
        infos = []
        for _ in range(tensor_count):
            name = self._string()
            dims = [self._unpack("<Q") for _ in range(self._unpack("<I"))]
            infos.append((name, dims, self._unpack("<I"), self._unpack("<Q")))
        alignment = int(self.fields.get("general.alignment", 32))
        start = -(-self._at // alignment) * alignment
        self.tensors: list[Tensor] = []
        for name, dims, ggml_type, offset in infos:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            shape = tuple(reversed(dims))
            row_bytes = dims[0] // block * size
            rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
            raw = self._buffer[start + offset:start + offset + rows * row_bytes]
            data = raw.reshape(*shape[:-1], row_bytes)
            if ggml_type in _FLOATS:  # typed, as GGUFReader gives them
                data = data.view(_FLOATS[ggml_type])
            self.tensors.append(Tensor(name, ggml_type, shape, data))

    def _unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self._view, self._at)
        self._at += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._unpack("<Q")
        text = bytes(self._view[self._at:self._at + length]).decode("utf-8")
        self._at += length
        return text

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind in _NUMERIC:
            return self._unpack(_NUMERIC[kind][0])
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self._unpack("<I"), self._unpack("<Q")
        if item in _NUMERIC:
            dtype = np.dtype(_NUMERIC[item][1])
            values = np.frombuffer(self._view, dtype=dtype, count=count, offset=self._at)
            self._at += dtype.itemsize * count
            return values.tolist()
        return [self._value(item) for _ in range(count)]

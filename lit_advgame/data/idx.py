"""Reader for the IDX file format of MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file starts with a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim``
big-endian uint32 dimension sizes, then the data in C order (big-endian for multi-byte
types). MNIST images are ``0x00000803`` (uint8, 3 dims), labels ``0x00000801`` (uint8, 1 dim).
Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or not an IDX file."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise IdxFormatError(f"{path} is not a valid gzip file ({err}); delete it and fetch it again") from err


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into a numpy array of its declared shape and type.

    Raises:
        FileNotFoundError: the file does not exist.
        IdxFormatError: bad gzip data, bad magic number, unknown type code, wrong number of
            dimensions (when ``expected_ndim`` is given) or a data size that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxFormatError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise IdxFormatError(
            f"{path} has bad IDX magic number 0x{int.from_bytes(raw[:4], 'big'):08X} "
            "(expected 0x000008XX for uint8 data, e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise IdxFormatError(f"{path} holds a {ndim}-dimensional array; expected {expected_ndim} dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise IdxFormatError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = IDX_TYPES[type_code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual_bytes = len(raw) - header_size
    if actual_bytes != expected_bytes:
        raise IdxFormatError(
            f"{path} is corrupt or truncated: header declares shape {shape} ({expected_bytes} data bytes) "
            f"but the file holds {actual_bytes} data bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an IDX file (gzip if ``.gz``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_TYPES.items()}
    key = array.dtype.newbyteorder("=").str
    if key not in codes or array.ndim == 0:
        raise ValueError(f"cannot write a {array.ndim}-d array of dtype {array.dtype} as IDX")
    type_code = codes[key]
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[type_code]).tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)

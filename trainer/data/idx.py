"""The IDX file format of (Fashion-)MNIST: a big-endian header, then unsigned bytes.

Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one
uint32 size per dimension; the data follows in C order. So the magic number is 2049 for a
1-d label file and 2051 for a 3-d image file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from trainer.errors import ConfigError

_UNSIGNED_BYTE = 0x08


def _corrupt(path: Path, what: str) -> ConfigError:
    return ConfigError(
        "data.root",
        f"{path} is truncated or corrupt ({what}); delete it and fetch it again "
        "(reinstall dataset-fashion-mnist, or re-download), or point data.root=DIR at intact files",
    )


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (plain, or gzipped if it ends in .gz).

    Returns a uint8 tensor of the shape the header states. A wrong magic number, a size that
    does not match the header, or a broken gzip stream is a ConfigError naming the file.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, f"cannot be read: {error}") from None
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise _corrupt(path, f"{len(raw)} bytes, shorter than its {header_size}-byte header")
    zero, kind, dims = struct.unpack_from(">HBB", raw)
    if (zero, kind, dims) != (0, _UNSIGNED_BYTE, ndim):
        expected = (_UNSIGNED_BYTE << 8) | ndim
        raise _corrupt(path, f"magic number {struct.unpack_from('>I', raw)[0]}, expected {expected}")
    shape = struct.unpack_from(f">{ndim}I", raw, 4)
    size = header_size + math.prod(shape)
    if len(raw) != size:
        raise _corrupt(path, f"{len(raw)} bytes, but its header {list(shape)} says {size}")
    # bytearray: torch.frombuffer warns on the read-only bytes object and would share its memory.
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header_size).reshape(shape)

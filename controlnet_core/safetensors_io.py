"""Reading safetensors files into ordinary memory, never memory-mapped.

`safetensors.torch.load_file` maps the file: a tensor stays backed by the file's pages, so a file truncated or
replaced on disk while a server holds it raises SIGBUS on the next read and kills the whole process. Here the
header is parsed and every tensor is read with `readinto` into its own CPU buffer (peak memory = the tensors,
no second copy of the file); a short or inconsistent file raises `CheckpointError` naming the file.
Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the data.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


def _fail(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: unreadable safetensors file ({why}); the file is truncated or corrupt, "
                           "download it again")


def read_header(path: Path, f) -> tuple[dict, int]:
    """({name: entry}, offset of the data section) of an open file; metadata dropped."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise _fail(path, f"{size} bytes, shorter than the 8-byte header length")
    length = int.from_bytes(head, "little")
    if length > MAX_HEADER or 8 + length > size:
        raise _fail(path, f"header of {length} bytes in a file of {size}")
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length


def _tensor(path: Path, f, name: str, entry: dict, data_start: int, size: int) -> torch.Tensor:
    """One tensor read from its byte range into a fresh CPU buffer."""
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = [int(s) for s in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise _fail(path, f"tensor {name!r} has entry {str(entry)[:120]} (dtype, shape, data_offsets)") from None
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if end - begin != nbytes or begin < 0 or data_start + end > size:
        raise _fail(path, f"tensor {name!r} needs bytes {begin}..{end} of {size - data_start} ({nbytes} for "
                          f"{entry['dtype']}{shape})")
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    f.seek(data_start + begin)
    if nbytes and f.readinto(memoryview(buffer.numpy())) != nbytes:
        raise _fail(path, f"tensor {name!r} ends past the end of the file (changed while reading?)")
    return buffer.view(dtype).reshape(shape)


def load_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """{name: CPU tensor} of a safetensors file, each tensor in its own memory (no mmap, no shared storage)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header, data_start = read_header(path, f)
            size = os.fstat(f.fileno()).st_size
            return {name: _tensor(path, f, name, entry, data_start, size) for name, entry in header.items()}
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc.strerror or exc}); check that it exists and "
                              "is readable") from exc

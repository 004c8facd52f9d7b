"""Reading checkpoints safely (safetensors, weights-only torch.load, diffusers folders) and small helpers shared by
every kind's loader: unwrapping, storage dtype, casting, error samples."""
from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
PathLike = str | os.PathLike

DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}

# ---------------------------------------------------------------------------------------------------- reading

def read_state_dict(path: PathLike) -> StateDict:
    """Read a checkpoint safely: safetensors, or torch.load(weights_only=True) for .pth/.ckpt/.bin/.pt; unwrapped."""
    path = _weights_file(Path(path))
    if _looks_like_safetensors(path):
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return unwrap(raw, source=str(path))


def _weights_file(path: Path) -> Path:
    """The file to read: `path` itself, or the diffusers weights inside a `save_pretrained` directory."""
    if path.is_dir():
        for name in DIFFUSERS_WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: directory has none of {', '.join(DIFFUSERS_WEIGHT_NAMES)}; "
                              "pass the weights file itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path (ComfyUI: models/controlnet/)")
    return path


def _looks_like_safetensors(path: Path) -> bool:
    """Sniff the content, not the name: 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of a safetensors file on the CPU."""
    from ..safetensors_io import load_file

    return load_file(path)  # not memory-mapped: a file changed on disk later cannot SIGBUS the process


def _read_torch(path: Path) -> Any:
    """torch.load with weights_only=True: a pickle that names any non-tensor global is refused, never executed.

    Never memory-mapped (the host's default too: it maps torch files only with --mmap-torch-files): a mapped
    tensor stays backed by the file, so a .pth replaced or truncated on disk while a server holds its weights
    would change them or kill the process with SIGBUS. The price: a v1.0 file's locked SD, VAE and CLIP are read
    into memory too (~4 GB, freed once the ControlNet's tensors are picked out)."""
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" notices: the error below says what matters
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:  # a file object: torch.load would route a *.safetensors name elsewhere
                return torch.load(f, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: cannot be read safely: torch.load(weights_only=True) refused it ({_unpickler_reason(exc)}; "
            "nothing in it was executed). It is corrupt, a pickle that would run code, or a training checkpoint "
            "holding objects beside its weights (mmengine's): use a .safetensors file or, only if you trust this "
            f"one, keep only its weights once: python -c \"import torch; p = r'{path}'; "
            "c = torch.load(p, map_location='cpu', weights_only=False); "
            "torch.save(c.get('state_dict', c), p)\"") from exc
    except Exception as exc:  # noqa: BLE001 - on garbage the unpickler raises IndexError, struct.error, ...
        if isinstance(exc, MemoryError):
            raise
        raise CheckpointError(f"{path}: not a safetensors file and not a readable torch file "
                              f"({_first_line(exc)}); the file is truncated or corrupt, download it again") from exc


def _unpickler_reason(exc: BaseException) -> str:
    """The specific line of torch's weights-only error (the global or opcode it refused), without its boilerplate."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith(boiler)) or _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def unwrap(obj: Any, *, source: str = "<state dict>") -> StateDict:
    """Strip `{"state_dict": ...}` and one-key dict wrappers (ldm, Lightning, ComfyUI); every value must be a tensor."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        elif len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
            obj = next(iter(obj.values()))
        else:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict of tensors; "
                              "pass a ControlNet weights file")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} entries are not named tensors ({_sample(bad)}); "
                              "pass a ControlNet weights file, not a training checkpoint")
    return dict(obj)



def storage_dtype(sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> torch.dtype:
    """The dtype holding most of the floating-point elements."""
    counts = Counter()
    for value in sd.values():
        if value.is_floating_point():
            counts[value.dtype] += value.numel()
    if not counts:
        raise CheckpointError(f"{source}: no floating-point tensors; pass a ControlNet weights file")
    return counts.most_common(1)[0][0]



def _sample(items, n: int = 5) -> str:
    items = list(items)
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more



def cast_each(sd: StateDict, *, dtype: torch.dtype | None, device=None, copy: bool = False) -> StateDict:
    """Cast floating tensors one at a time, in place in `sd` (our own dict), so two full copies never coexist."""
    for key in list(sd):
        value = sd.pop(key)
        sd[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else None, copy=copy)
    return sd


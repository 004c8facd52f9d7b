"""Pure-torch networks of the learned preprocessors, and the one loader for their published weight files.

Each network family lives in its own module here (`hed.py`, `openpose.py`, ...) and declares its `Architecture`s:
a builder, the file names under which the weights are published and where. Loading is the same for all of them
(shared/research/preprocessors_next.md §3 "Generic detection recipe"):

1. find the file: `models_dir` is a file, a folder holding the file under a published name, or a list of such
   folders (the host passes every registered `models/controlnet_preprocessors` folder);
2. read it safely (`.safetensors`, or `torch.load(weights_only=True)`), unwrap `state_dict` / `model` / one-key
   wrappers and `module.` prefixes, keep fp16 storage as it is (cast when the module is built);
3. name the architecture by comparing the file's (key, shape) set with each candidate built on the meta device
   (BatchNorm `num_batches_tracked` buffers may be present or absent);
4. load strictly (`assign=True`, no random init), eval mode, no gradients.

Every failure is one `PreprocessError` line naming the file, the folder(s) searched, the architecture expected and
where the file is published. Nothing is downloaded.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...errors import CheckpointError, PreprocessError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
ModelsDir = str | os.PathLike | Sequence[str | os.PathLike] | None
OPTIONAL_SUFFIXES = (".num_batches_tracked",)  # buffers some exports drop and others keep


@dataclass(frozen=True)
class Architecture:
    """One network whose published weights we read: builder, file names, origin and licence."""

    name: str  # e.g. "hed", "pidinet", "openpose_body"
    build: Callable[[], nn.Module]  # a fresh module (called on the meta device for detection)
    files: tuple[str, ...]  # published file names, first = the usual one
    published: str  # where the files are published (repository / URL)
    licence: str = ""
    finish: Callable[[nn.Module], nn.Module] | None = None  # after strict loading: fold kernels, fuse norms
    extra_prefixes: tuple[str, ...] = ()  # file keys that are no weights of the module (mmcv EMA copies `ema_*`)


    def describe(self) -> str:
        return f"{self.name} ({' or '.join(self.files)}, published at {self.published})"


def search_dirs(models_dir: ModelsDir) -> list[Path]:
    """`models_dir` as a list of paths (None -> [])."""
    if models_dir is None or models_dir == "":
        return []
    if isinstance(models_dir, (str, os.PathLike)):
        return [Path(models_dir).expanduser()]
    return [Path(p).expanduser() for p in models_dir]


def find_weights(models_dir: ModelsDir, arch: Architecture) -> Path:
    """The weight file of `arch`: `models_dir` itself when it is a file, else the first published name found in
    the folder(s); a PreprocessError naming the file, the folders searched and where it is published otherwise."""
    dirs = search_dirs(models_dir)
    for path in dirs:
        if path.is_file():
            return path
    for path in dirs:
        for name in arch.files:
            if (path / name).is_file():
                return path / name
    where = ", ".join(str(p) for p in dirs) or "no folder (pass models_dir, or put it in models/controlnet_preprocessors)"
    raise PreprocessError(f"{arch.name}: weight file {arch.files[0]} not found in {where}; "
                          f"it is published at {arch.published} (nothing is downloaded: place the file there)")


def read_weights(path: str | os.PathLike) -> StateDict:
    """A weight file's tensors, unwrapped (`state_dict`, `model`, `module.`), read safely (see formats.py)."""
    from ...formats import _looks_like_safetensors, _read_safetensors, _read_torch, _weights_file, unwrap

    try:
        file = _weights_file(Path(path))
        raw = _read_safetensors(file) if _looks_like_safetensors(file) else _read_torch(file)
        sd = unwrap(_unwrap_model(raw), source=str(file))
    except CheckpointError as exc:
        raise PreprocessError(str(exc)) from exc
    return strip_prefix(sd, "module.")


def _unwrap_model(raw: Mapping[str, object]) -> Mapping[str, object]:
    """`{"model": {...}, ...}` training checkpoints (NormalBAE's scannet.pt) hold the weights under "model"."""
    inner = raw.get("model") if isinstance(raw, Mapping) else None
    return inner if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()) else raw


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """A new dict without `prefix` on the keys when every key has it (DataParallel `module.`); else a copy."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def key_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a module's state dict (parameters and persistent buffers)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _meta_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return key_shapes(arch.build())


def _required(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: s for k, s in shapes.items() if not k.endswith(OPTIONAL_SUFFIXES)}


def matches(sd: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """True when `sd` has exactly the module's keys and shapes (optional buffers aside)."""
    have = _required({k: tuple(v.shape) for k, v in sd.items()})
    return have == _required(shapes)


def detect(sd: Mapping[str, torch.Tensor], candidates: Sequence[Architecture], source: str) -> Architecture:
    """The candidate whose meta-built (key, shape) set equals the file's; a PreprocessError naming the file, the
    architectures expected and the closest mismatch otherwise."""
    best, best_score = None, -1.0
    for arch in candidates:
        shapes = _meta_shapes(arch)
        if matches(sd, shapes):
            return arch
        have, want = set(_required({k: tuple(v.shape) for k, v in sd.items()}).items()), set(_required(shapes).items())
        score = len(have & want) / max(1, len(have | want))
        if score > best_score:
            best, best_score = (arch, have, want), score
    detail = ""
    if best is not None:
        arch, have, want = best
        missing = sorted(k for k, _ in want - have)[:3]
        extra = sorted(k for k, _ in have - want)[:3]
        detail = f" (closest: {arch.name}, {best_score:.0%} of keys agree; e.g. expected {missing}, found {extra})"
    names = "; ".join(a.describe() for a in candidates)
    raise PreprocessError(f"{source}: {len(sd)} tensors that match none of the expected architectures{detail}; "
                          f"expected {names}")


def build_loaded(arch: Architecture, sd: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, finish: bool = True) -> nn.Module:
    """`arch` built on the meta device and given `sd`'s tensors (cast to `dtype`) strictly; eval, no grad; then
    `arch.finish` unless `finish=False` (the module as published: the reference side of tests and benchmarks)."""
    with torch.device("meta"):
        module = arch.build()
    expected = module.state_dict()
    weights = {}
    for key, ref in expected.items():
        value = sd.get(key)
        if value is None:  # an optional buffer the file does not carry
            value = torch.zeros(ref.shape, dtype=ref.dtype)
        # copy=True: torch files are read memory-mapped, and a mapped weight would change (or fault) when the file
        # is rewritten or truncated on disk while the module lives
        weights[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype, copy=True)
    module.load_state_dict(weights, strict=True, assign=True)
    for name, buffer in list(module.named_buffers()):  # non-persistent buffers are still on meta: rebuild them
        if buffer.is_meta:
            raise PreprocessError(f"{arch.name}: buffer {name} is not stored in the weights; make it persistent "
                                  "or compute it in forward (this is a bug in the network module)")
    module = module.eval().requires_grad_(False)
    return arch.finish(module) if finish and arch.finish is not None else module


def load_network(models_dir: ModelsDir, candidates: Sequence[Architecture], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> tuple[Architecture, nn.Module]:
    """Find, read, detect and strictly load one of `candidates` (the first one names the file to look for)."""
    path = _find_any(models_dir, candidates)
    sd = read_weights(path)
    extra = tuple(p for arch in candidates for p in arch.extra_prefixes)
    sd = {k: v for k, v in sd.items() if not (extra and k.startswith(extra))}
    arch = detect(sd, candidates, str(path))
    module = build_loaded(arch, sd, dtype, device)
    logger.info("loaded %s from %s (%d tensors, %s)", arch.name, path, len(sd), dtype)
    return arch, module


def _find_any(models_dir: ModelsDir, candidates: Sequence[Architecture]) -> Path:
    """The file of the first candidate found; the error names the first (the usual) one."""
    for arch in candidates:
        try:
            return find_weights(models_dir, arch)
        except PreprocessError:
            continue
    return find_weights(models_dir, candidates[0])  # raises with the usual file's name


class NetCache:
    """Loaded preprocessor networks, one per (file, architecture set, dtype), reused until `clear()`.

    The holder decides how long weights live (the host node keeps one per server process). `manage`, when given,
    is called with each module before it runs and returns the device to run it on: the host hands the module to
    its model management there (load to the GPU, evict others); without it modules run on the image's device.
    """

    def __init__(self, manage: Callable[[nn.Module], torch.device] | None = None):
        self.manage = manage
        self._nets: dict = {}
        self.loads = 0  # how many times weights were read from disk

    def get(self, models_dir: ModelsDir, candidates: Sequence[Architecture], *, dtype: torch.dtype = torch.float32,
            image_device: torch.device | str = "cpu") -> tuple[Architecture, nn.Module, torch.device]:
        """(architecture, module, device to run on) for the file `models_dir` resolves to."""
        path = _find_any(models_dir, candidates)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, tuple(a.name for a in candidates), dtype)
        entry = self._nets.get(key)
        if entry is None:
            self._drop_path(key[0])  # the file changed on disk: forget its old weights
            arch, module = load_network(path, candidates, dtype=dtype)
            entry = self._nets[key] = (arch, module)
            self.loads += 1
        arch, module = entry
        device = self.manage(module) if self.manage is not None else torch.device(image_device)
        if next(module.parameters()).device != device:
            module.to(device)
        return arch, module, device

    def _drop_path(self, path: str) -> None:
        for key in [k for k in self._nets if k[0] == path]:
            del self._nets[key]

    def clear(self) -> None:
        """Forget every module (their memory is freed with the last reference)."""
        self._nets.clear()

"""Local, offline transformers models for the network preprocessors, loaded once and held by a ModelCache.

A model folder is what `save_pretrained` writes (or `huggingface-cli download REPO --local-dir FOLDER` fetches):
config.json, model.safetensors and preprocessor_config.json. Nothing is downloaded: transformers is called with
`local_files_only=True`. The cache is an object, not a module global: whoever holds it (the host node) decides how
long the weights live, and can hand `.model` to the host's memory manager and move it with `.to(device, dtype)`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import PreprocessError

logger = logging.getLogger(__name__)

EXPECTED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
TASKS = {  # task -> (transformers auto class, example repositories for the error message)
    "depth": ("AutoModelForDepthEstimation", "depth-anything/Depth-Anything-V2-Small-hf, Intel/dpt-hybrid-midas"),
    "segmentation": ("AutoModelForSemanticSegmentation", "openmmlab/upernet-convnext-small, "
                                                         "nvidia/segformer-b0-finetuned-ade-512-512"),
}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resample codes used by transformers image processors


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its pixels, read from preprocessor_config.json (DPT / Depth Anything / SegFormer keys)."""

    height: int | None = None
    width: int | None = None
    shortest_edge: int | None = None
    keep_aspect_ratio: bool = False
    multiple: int = 1
    resample: str = "bicubic"
    do_resize: bool = True
    do_normalize: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, config: dict) -> "InputSpec":
        """Parse the keys we use; unknown keys are ignored, missing ones take the transformers defaults."""
        size = config.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        mean, std = config.get("image_mean", cls.mean), config.get("image_std", cls.std)
        return cls(height=size.get("height"), width=size.get("width"), shortest_edge=size.get("shortest_edge"),
                   keep_aspect_ratio=bool(config.get("keep_aspect_ratio", False)),
                   multiple=int(config.get("ensure_multiple_of", 1) or 1),
                   resample=_RESAMPLE.get(int(config.get("resample", 3)), "bicubic"),
                   do_resize=bool(config.get("do_resize", True)), do_normalize=bool(config.get("do_normalize", True)),
                   mean=tuple(float(v) for v in _three(mean)), std=tuple(float(v) for v in _three(std)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The model's input size for an image of height x width (transformers DPT get_resize_output_image_size)."""
        if not self.do_resize:
            return height, width
        if self.shortest_edge:
            scale_h = scale_w = self.shortest_edge / min(height, width)
        elif self.height and self.width:
            scale_h, scale_w = self.height / height, self.width / width
            if self.keep_aspect_ratio:  # scale as little as possible, keep the aspect ratio
                scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        else:
            return height, width
        return _to_multiple(scale_h * height, self.multiple), _to_multiple(scale_w * width, self.multiple)


def _three(values) -> tuple:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,) * 3
    return values if len(values) == 3 else (values[0],) * 3


def _to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple, at least one multiple."""
    return max(multiple, int(round(value / multiple)) * multiple)


def prepare_pixels(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the model's pixel_values: resized (antialiased like PIL) and normalised."""
    size = spec.output_size(*x.shape[-2:])
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode=spec.resample, align_corners=False, antialias=True)
    if spec.do_normalize:
        mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def check_model_folder(folder: str | Path | None, task: str) -> Path:
    """Resolve a model folder; a PreprocessError names the folder, the missing files and where to get them."""
    auto_class, examples = TASKS[task]
    if folder is None or str(folder) == "":
        raise PreprocessError(f"the {task} preprocessor needs a local model folder (models_dir) holding "
                              f"{', '.join(EXPECTED_FILES)}; download one, e.g. `huggingface-cli download "
                              f"{examples.split(',')[0]} --local-dir <folder>`")
    path = Path(folder).expanduser()
    missing = [name for name in EXPECTED_FILES if not (path / name).is_file()]
    if "model.safetensors" in missing and (path / "model.safetensors.index.json").is_file():
        missing.remove("model.safetensors")  # sharded weights
    if missing:
        hint = _subfolders_with_models(path)
        raise PreprocessError(
            f"{task} model folder {str(path)!r} lacks {', '.join(missing)} (expected {', '.join(EXPECTED_FILES)})"
            + (f"; these subfolders hold models: {', '.join(hint)} - pass one of them" if hint else "")
            + f". Put a transformers {auto_class} model there, e.g. `huggingface-cli download "
            f"{examples.split(',')[0]} --local-dir {path}` (one of: {examples})")
    return path


def _subfolders_with_models(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "config.json").is_file())


class ModelCache:
    """One network preprocessor model, loaded from a local folder once and reused until `unload()`.

    `load_device=None` runs the model on the device of the image it is given; a host that manages the weights
    (ComfyUI's ModelPatcher) sets `load_device` to its own choice and moves `.model` itself.
    """

    def __init__(self, load_device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.load_device = None if load_device is None else torch.device(load_device)
        self.dtype = dtype
        self.model: torch.nn.Module | None = None
        self.folder: Path | None = None
        self.task: str | None = None
        self.input_spec: InputSpec | None = None
        self.loads = 0  # how many times weights were read from disk

    @property
    def device(self) -> torch.device | None:
        """Where the weights are now (None when nothing is loaded)."""
        return None if self.model is None else next(self.model.parameters()).device

    def load(self, folder: str | Path | None, task: str) -> torch.nn.Module:
        """The model in `folder` for `task` ("depth" | "segmentation"); reads the disk only when it changed.
        Depth also reads an original Depth Anything V2 file (`folder` is the file, or a folder holding it)."""
        original = _original_depth_file(folder) if task == "depth" else None
        path = original if original is not None else check_model_folder(folder, task)
        if self.model is not None and self.folder == path.resolve() and self.task == task:
            return self.model
        self.unload()
        if original is not None:
            from .depth_anything import INPUT, load_original

            self.model, self.input_spec = load_original(path, self.dtype), INPUT
        else:
            self.model = _from_pretrained(path, task, self.dtype)
            self.input_spec = InputSpec.from_dict(json.loads((path / "preprocessor_config.json").read_text()))
        self.folder, self.task = path.resolve(), task
        self.loads += 1
        logger.info("loaded %s model %s (%s) from %s", task, type(self.model).__name__, self.dtype, path)
        return self.model

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ModelCache":
        """Move/cast the held model (and remember the dtype for later loads)."""
        if dtype is not None:
            self.dtype = dtype
        if self.model is not None:
            self.model.to(device=device, dtype=dtype)
        return self

    def ready(self, image_device: torch.device) -> torch.device:
        """The device to run on: `load_device`, else the image's; moves the model there when needed."""
        target = self.load_device or image_device
        if self.model is not None and self.device != target:
            self.model.to(target)
        return target

    def unload(self) -> None:
        """Drop the model (its memory is freed with the last reference)."""
        self.model, self.folder, self.task, self.input_spec = None, None, None, None


def _original_depth_file(folder: str | Path | None) -> Path | None:
    from .depth_anything import find_original

    return find_original(folder)


def _from_pretrained(path: Path, task: str, dtype: torch.dtype) -> torch.nn.Module:
    """transformers Auto* loading, offline; turns its errors into one PreprocessError naming the folder."""
    try:
        import transformers
    except ImportError as exc:
        raise PreprocessError(f"the {task} preprocessor needs the `transformers` package: pip install transformers"
                              ) from exc
    auto_class, examples = TASKS[task]
    config = json.loads((path / "config.json").read_text())
    try:
        model = getattr(transformers, auto_class).from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except (ValueError, KeyError) as exc:
        raise PreprocessError(f"{path / 'config.json'} describes a {config.get('model_type', '?')!r} model, which "
                              f"transformers cannot load as {auto_class} ({exc}); use a {task} model such as "
                              f"{examples}") from exc
    except OSError as exc:
        raise PreprocessError(f"could not read the {task} model in {path}: {exc}") from exc
    return _own_memory(model).eval().requires_grad_(False)


def _own_memory(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every weight off the file's memory map (transformers maps model.safetensors): a model file replaced or
    truncated on disk later must not SIGBUS the process that holds the model."""
    with torch.no_grad():
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, tensor in store.items():
                    if tensor is not None and tensor.device.type == "cpu":
                        tensor.data = tensor.data.clone()
    return model


def run_model(model: torch.nn.Module, pixels: torch.Tensor, folder: Path | None):
    """One forward pass without autograd; a failure inside the network names the model folder and the input."""
    try:
        with torch.inference_mode():
            return model(pixel_values=pixels)
    except RuntimeError as exc:
        raise PreprocessError(f"the {type(model).__name__} in {folder} failed on an input of shape "
                              f"{tuple(pixels.shape)} ({exc}); check its preprocessor_config.json (size, "
                              "keep_aspect_ratio, ensure_multiple_of)") from exc

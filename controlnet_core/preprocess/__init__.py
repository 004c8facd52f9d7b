"""Hint preprocessors: every one is `(image (B, H, W, C) float in [0, 1], **options) -> image (B, H, W, 3)`.

`PREPROCESSORS` maps a name to a `PreprocessorSpec` (function, options with default/min/max/step/tooltip, one-line
description), so a host can build its widgets from it; `run(name, image, **options)` validates the input and the
options, applies the shared resolution options (`COMMON_OPTIONS`, see resize.py and docs/preprocessors.md) and
calls the function on the image's device. Importing this module is cheap: implementations (torch, OpenCV,
transformers) are imported when a preprocessor first runs.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import PreprocessError
from ._choices import CANNY_BACKENDS, NORMAL_CONVENTIONS, RESIZE_MODES

logger = logging.getLogger(__name__)

KINDS = ("int", "float", "bool", "choice", "mask")
CHUNK_FRAMES = 16  # frames per call for frame-independent preprocessors (bounded memory, progress steps)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One preprocessor option as a host widget: kind, default, range and tooltip."""

    name: str
    kind: str
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    tooltip: str = ""

    def coerce(self, value: Any, owner: str) -> Any:
        """`value` (a Python value or a command-line string) as this option's type, range-checked."""
        where = f"option {self.name!r} of {owner}"
        if self.kind == "mask":
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise PreprocessError(f"{where}: {value!r} is not one of {self.choices}")
            return value
        if self.kind == "bool":
            return _to_bool(value, where)
        number = _to_number(value, self.kind, where)
        if self.min is not None and number < self.min:
            raise PreprocessError(f"{where}: {number} is below the minimum {self.min}")
        if self.max is not None and number > self.max:
            raise PreprocessError(f"{where}: {number} is above the maximum {self.max}")
        return number


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise PreprocessError(f"{where}: {value!r} is not a boolean (use true or false)")


def _to_number(value: Any, kind: str, where: str) -> int | float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PreprocessError(f"{where}: {value!r} is not a number") from None
    if kind == "int":
        if number != int(number):
            raise PreprocessError(f"{where}: {value!r} is not a whole number")
        return int(number)
    return number


@dataclass(frozen=True)
class PreprocessorSpec:
    """A registered preprocessor: where its function lives, its options and what it does."""

    name: str
    target: str  # "module:function" inside this package, imported on first use
    description: str
    options: tuple[Option, ...] = ()
    model_folder: str | None = None  # transformers preprocessors: the host passes models_dir (+ a ModelCache)
    net_folder: str | None = None  # pure-torch nets (nets/): the host passes models_dir (folders) + a NetCache
    frame_independent: bool = True  # each frame's result depends on that frame only (run() may chunk the batch)
    keypoints: bool = False  # the function returns (image, keypoints): one OpenPose-JSON dict per frame

    @property
    def function(self) -> Callable[..., Any]:
        """The implementation (imports its module on first access)."""
        module, name = self.target.split(":")
        return getattr(importlib.import_module(f".{module}", __name__), name)

    def defaults(self) -> dict[str, Any]:
        """Option name -> default value."""
        return {option.name: option.default for option in self.options}

    def option(self, name: str) -> Option:
        """The option called `name` (PreprocessError listing the valid ones otherwise)."""
        for option in self.options:
            if option.name == name:
                return option
        raise PreprocessError(f"{self.name} has no option {name!r}; its options are "
                              f"{[o.name for o in self.options] or 'none'} plus {[o.name for o in COMMON_OPTIONS]}")


def _temporal(what: str) -> Option:
    return Option("temporal_normalize", "bool", False,
                  tooltip=f"Video: compute the {what} over the whole batch instead of per frame, so consecutive "
                          "frames are scaled alike and do not flicker.")


def _threshold(name: str, default: int, tooltip: str) -> Option:
    return Option(name, "int", default, 0, 255, 1, tooltip=tooltip)


def _batch(default: int) -> Option:
    return Option("batch_size", "int", default, 1, 64, 1,
                  tooltip="Frames per network call: larger is faster on a GPU, smaller needs less memory.")



_POSE_OPTIONS = (
    Option("draw_body", "bool", True, tooltip="Draw the body skeleton (off: hands and face only)."),
    Option("xinsir_sticks", "bool", False,
           tooltip="Thicker limbs on large hints, as xinsir's SDXL openpose model was trained (off: ControlNet 1.1)."),
    Option("smooth", "bool", False,
           tooltip="Video: follow each person across the frames and smooth the keypoints (One-Euro filter) so "
                   "the skeleton does not jitter."),
)

COMMON_OPTIONS = (
    Option("resolution", "int", 0, 0, 16384, 8,
           tooltip="Short side, in pixels, of the image the preprocessor works on and returns (rounded to a "
                   "multiple of 8, the long side scaled alike). 0 keeps the input size."),
    Option("pixel_perfect", "bool", False,
           tooltip="Choose the resolution from target_width x target_height so that the hint maps 1:1 onto the "
                   "generated image (A1111 pixel-perfect)."),
    Option("target_width", "int", 0, 0, 16384, 8,
           tooltip="Fit the result to this width with resize_mode (0: no fit). Usually the generation width."),
    Option("target_height", "int", 0, 0, 16384, 8,
           tooltip="Fit the result to this height with resize_mode (0: no fit). Usually the generation height."),
    Option("resize_mode", "choice", "Crop and Resize", choices=RESIZE_MODES,
           tooltip="Just Resize: stretch. Crop and Resize: cover the target and cut the centre (the host's "
                   "behaviour). Resize and Fill: fit inside and fill the borders with the image's border colour."),
)

_CANNY_LOW = _threshold("low_threshold", 100, "Canny low threshold on the 0-255 scale (cv2.Canny threshold1): "
                                              "weaker gradients are never edges.")
_CANNY_HIGH = _threshold("high_threshold", 200, "Canny high threshold on the 0-255 scale (cv2.Canny threshold2): "
                                                "edges start at gradients above it.")
_GAMMA = Option("gamma", "float", 1.0, 0.1, 2.0, 0.01, tooltip="Gamma applied to the result (x ** gamma).")
_SAFE = Option("safe", "bool", False, tooltip="Safe mode: quantise the edge strength to 3 levels (0, 127, 255), as "
                                               "part of the ControlNet 1.1 softedge training data was.")
_SCRIBBLE = Option("scribble", "bool", False, tooltip="Fake scribble: thin the soft edges to 0/255 strokes (non-maximum "
                                                      "suppression and blur, as the annotators do).")
_STRETCH = Option("normalize", "bool", False, tooltip="Stretch the darkest value to black and the brightest to white.")

PREPROCESSORS: dict[str, PreprocessorSpec] = {spec.name: spec for spec in (
    PreprocessorSpec("canny", "edges:canny", "Canny edges exactly as cv2.Canny on the RGB image (ControlNet canny).",
                     (_CANNY_LOW, _CANNY_HIGH,
                      Option("backend", "choice", "auto", choices=CANNY_BACKENDS,
                             tooltip="auto: OpenCV on CPU, batched torch on a GPU. Both give the same edges."))),
    PreprocessorSpec("threshold", "edges:threshold", "White where the grey level is above a threshold (0: Otsu).",
                     (_threshold("threshold", 127, "Grey level on the 0-255 scale; 0 picks it by Otsu's method."),
                      Option("invert", "bool", False, tooltip="Black above the threshold instead of white."),
                      _temporal("Otsu threshold")), frame_independent=False),
    PreprocessorSpec("binary", "edges:binary", "Dark strokes to white on black (Aux Binary; threshold 0: Otsu).",
                     (_threshold("threshold", 100, "Grey level on the 0-255 scale; 0 picks it by Otsu's method."),
                      Option("invert", "bool", True, tooltip="White where darker than the threshold (line art)."),
                      _temporal("Otsu threshold")), frame_independent=False),
    PreprocessorSpec("lineart_standard", "lines:lineart_standard",
                     "Line art from the difference of a Gaussian blur and the image (no network).",
                     (Option("gaussian_sigma", "float", 6.0, 0.5, 32.0, 0.1, tooltip="Blur radius in pixels."),
                      Option("intensity_threshold", "int", 8, 0, 255, 1,
                             tooltip="Line strengths above this (0-255) set the normalising median."),
                      _temporal("normalising median")), frame_independent=False),
    PreprocessorSpec("scribble_xdog", "lines:scribble_xdog", "Scribbles from an extended difference of Gaussians.",
                     (Option("threshold", "int", 32, 1, 64, 1, tooltip="Lower: more strokes."),)),
    PreprocessorSpec("straight_lines", "lines:straight_lines",
                     "Straight segments by a Hough transform on Canny edges (an M-LSD substitute, no network).",
                     (_CANNY_LOW, _CANNY_HIGH,
                      Option("hough_threshold", "int", 50, 1, 1000, 1, tooltip="Votes a segment needs."),
                      Option("min_line_length", "int", 32, 1, 4096, 1, tooltip="Shortest segment kept, in pixels."),
                      Option("max_line_gap", "int", 4, 0, 512, 1, tooltip="Largest gap bridged within a segment."),
                      Option("thickness", "int", 1, 1, 16, 1, tooltip="Line width of the drawn segments."))),
    PreprocessorSpec("invert", "color:invert", "1 - image: black lines on white become white on black."),
    PreprocessorSpec("shuffle", "color:shuffle", "Content shuffle: warp by a smooth random flow (same for all frames).",
                     (Option("seed", "int", 0, 0, 2**31 - 1, 1, tooltip="Seed of the random flow field."),
                      Option("cell_size", "int", 256, 8, 2048, 8, tooltip="Size of the flow's random cells."))),
    PreprocessorSpec("tile", "color:tile", "Tile/blur hint: down-sample by a rate, back to the input size.",
                     (Option("down_sampling_rate", "float", 1.0, 1.0, 8.0, 0.1,
                             tooltip="Below 1.1 the image is returned as is."),)),
    PreprocessorSpec("color_grid", "color:color_grid", "T2I-Adapter colour grid: one colour per cell.",
                     (Option("cell_size", "int", 64, 4, 512, 4, tooltip="Cell side in pixels."),)),
    PreprocessorSpec("luminance", "color:luminance", "Lightness CIE L* (recolor models).",
                     (_GAMMA, _STRETCH, _temporal("min/max of normalize")), frame_independent=False),
    PreprocessorSpec("intensity", "color:intensity", "HSV value max(R, G, B) (recolor models).",
                     (_GAMMA, _STRETCH, _temporal("min/max of normalize")), frame_independent=False),
    PreprocessorSpec("inpaint", "color:inpaint", "Inpaint hint: masked pixels set to -1 (ControlNet inpaint).",
                     (Option("mask", "mask", None, tooltip="1 = repaint, 0 = keep; resized to the image."),
                      Option("black_masked", "bool", False,
                             tooltip="Masked pixels black (0), as the union / ProMax repaint type was trained; "
                                     "off: -1, as the ControlNet 1.1 inpaint model expects.")),
                     frame_independent=False),
    PreprocessorSpec("normal_from_depth", "depth:normal_from_depth",
                     "Surface normals from a depth map (near = white); no network.",
                     (Option("strength", "float", 1.0, 0.05, 10.0, 0.05,
                             tooltip="Relief: at 1 a depth ramp across the short side tilts by 45 degrees."),
                      Option("bg_threshold", "float", 0.4, 0.0, 1.0, 0.01,
                             tooltip="Depth below this (far) is flat background."),
                      Option("convention", "choice", "bae", choices=NORMAL_CONVENTIONS,
                             tooltip="bae: red = left, green = up (ControlNet 1.1 normalbae). opengl: red = right."),
                      _temporal("depth range")), frame_independent=False),
    PreprocessorSpec("depth", "depth:depth",
                     "Depth from a local model: a transformers folder (DPT/MiDaS, Depth Anything, ZoeDepth, Depth Pro) "
                     "or an original Depth Anything V2 file (licence: Small Apache-2.0, Base/Large CC-BY-NC-4.0 "
                     "non-commercial; Depth Pro research only).",
                     (_temporal("depth range"), _batch(8),
                      Option("align_frames", "bool", False,
                             tooltip="Video: fit each frame's depth to the previous frame by a least-squares scale "
                                     "and shift before normalising, so the clip does not pump; use with "
                                     "temporal_normalize.")),
                     model_folder="depth", frame_independent=False),
    PreprocessorSpec("segmentation", "segment:segmentation",
                     "ADE20K-coloured semantic segmentation from a local transformers model (UperNet, SegFormer).",
                     (_batch(4),), model_folder="segmentation", frame_independent=False),
    PreprocessorSpec("resize", "resize:resize", "Fit an image or a finished hint to a size with a resize mode.",
                     (Option("width", "int", 512, 8, 16384, 8, tooltip="Output width."),
                      Option("height", "int", 512, 8, 16384, 8, tooltip="Output height."),
                      Option("mode", "choice", "Crop and Resize", choices=RESIZE_MODES,
                             tooltip=COMMON_OPTIONS[4].tooltip))),
    # learned preprocessors (nets/): weights from models/controlnet_preprocessors/<net_folder>/ or that folder
    PreprocessorSpec("hed", "softedge:hed", "HED soft edges (ControlNetHED.pth, Apache-2.0).",
                     (_SAFE, _SCRIBBLE, _batch(8)), net_folder="softedge"),
    PreprocessorSpec("pidinet", "softedge:pidinet",
                     "PiDiNet soft edges (table5_pidinet.pth; licence: research use only, commercial use needs the "
                     "authors' permission).",
                     (_SAFE, _SCRIBBLE, Option("apply_filter", "bool", False,
                                               tooltip="Binary edges: keep only edge probabilities above 0.5."),
                      _batch(8)), net_folder="softedge"),
    PreprocessorSpec("teed", "softedge:teed", "TEED soft edges (7_model.pth or MistoLine's MTEED.pth, MIT).",
                     (Option("safe_steps", "int", 2, 0, 10, 1,
                             tooltip="Safe mode: quantise the edge strength to this many steps (0: off)."),
                      _batch(16)), net_folder="softedge"),
    PreprocessorSpec("lineart", "lineart:lineart",
                     "Line art from the informative-drawings generator (sk_model.pth; coarse: sk_model2.pth, MIT).",
                     (Option("coarse", "bool", False, tooltip="Use the coarse generator (sk_model2.pth) instead of "
                                                              "the realistic one (sk_model.pth)."),
                      _batch(8)), net_folder="lineart"),
    PreprocessorSpec("lineart_anime", "lineart:lineart_anime", "Anime line art (netG.pth, pix2pix U-Net, MIT).",
                     (_batch(4),), net_folder="lineart"),
    PreprocessorSpec("mlsd", "mlsd:mlsd",
                     "M-LSD straight line segments (mlsd_large_512_fp32.pth or mlsd_tiny_512_fp32.pth, Apache-2.0).",
                     (Option("score_threshold", "float", 0.1, 0.0, 1.0, 0.01,
                             tooltip="Keep a segment when its centre score is above this (M-LSD thr_v)."),
                      Option("distance_threshold", "float", 0.1, 0.0, 100.0, 0.05,
                             tooltip="Keep a segment longer than this, in pixels of the half-resolution output "
                                     "grid (M-LSD thr_d)."),
                      Option("model", "choice", "large", choices=("large", "tiny"),
                             tooltip="large: mlsd_large_512_fp32.pth; tiny: mlsd_tiny_512_fp32.pth."),
                      _batch(16)), net_folder="mlsd"),
    PreprocessorSpec("normal_bae", "normals:normal_bae",
                     "NormalBAE surface normals (scannet.pt, MIT) in the ControlNet 1.1 normalbae colours.",
                     (_batch(4),), net_folder="normal"),
    # pose (pose/): keypoints out as POSE_KEYPOINT (OpenPose JSON), hint drawn as the openpose ControlNets were trained
    PreprocessorSpec("openpose", "pose:openpose",
                     "OpenPose body (body_pose_model.pth), optional hands (hand_pose_model.pth) and face "
                     "(facenet.pth); licence: CMU, non-commercial research only.",
                     (Option("hands", "bool", False, tooltip="Detect and draw the hands (hand_pose_model.pth)."),
                      Option("face", "bool", False, tooltip="Detect and draw the face landmarks (facenet.pth)."),
                      *_POSE_OPTIONS, _batch(4)), net_folder="openpose", frame_independent=False, keypoints=True),
    PreprocessorSpec("dwpose", "pose:dwpose",
                     "DWPose whole body: YOLOX-l person boxes (yolox_l.pth) and RTMPose-l 133 keypoints "
                     "(dw-ll_ucoco_384.pth) drawn as OpenPose body, hands and face; licence: Apache-2.0.",
                     (Option("hands", "bool", True, tooltip="Draw the hands (and write them to the keypoints)."),
                      Option("face", "bool", True, tooltip="Draw the face landmarks (and write them to the keypoints)."),
                      *_POSE_OPTIONS, _batch(4)), net_folder="dwpose", frame_independent=False, keypoints=True),
)}


def list_preprocessors() -> list[str]:
    """Registered preprocessor names, sorted."""
    return sorted(PREPROCESSORS)


def get_spec(name: str) -> PreprocessorSpec:
    """The spec of `name`; a PreprocessError lists the known names otherwise."""
    if name not in PREPROCESSORS:
        raise PreprocessError(f"unknown preprocessor {name!r}; known: {', '.join(list_preprocessors())}")
    return PREPROCESSORS[name]


@dataclass(frozen=True)
class PreprocessResult:
    """What a preprocessor made: the hint (B, H', W', 3) float32, and for pose preprocessors the keypoints (one
    OpenPose-JSON dict per frame: canvas size and people, docs/preprocessors.md), else None."""

    image: Any
    keypoints: list[dict] | None = None


def run(name: str, image: Any, *, progress: Callable[[int, int], None] | None = None,
        models_dir: str | None = None, model_cache: Any = None, **options: Any) -> Any:
    """Run preprocessor `name` on (B, H, W, C) `image` with validated options; returns (B, H', W', 3) float32."""
    return run_detailed(name, image, progress=progress, models_dir=models_dir, model_cache=model_cache,
                        **options).image


def run_detailed(name: str, image: Any, *, progress: Callable[[int, int], None] | None = None,
                 models_dir: str | None = None, model_cache: Any = None, **options: Any) -> PreprocessResult:
    """`run`, also returning what the preprocessor made beside the hint (pose keypoints)."""
    from ._image import check_image
    from .resize import fit, pixel_perfect_resolution, resize_short_side

    spec = get_spec(name)
    common = {o.name: o.coerce(options.pop(o.name, o.default), name) for o in COMMON_OPTIONS}
    params = {**spec.defaults(), **{key: spec.option(key).coerce(value, name) for key, value in options.items()}}
    image = check_image(image)
    resolution = common["resolution"]
    if common["pixel_perfect"]:
        resolution = pixel_perfect_resolution(image.shape[1], image.shape[2], common["target_height"],
                                              common["target_width"], common["resize_mode"])
    if resolution:
        image = resize_short_side(image, resolution)
    if spec.model_folder is not None or spec.net_folder is not None:
        params.update(models_dir=models_dir, model_cache=model_cache)
    result = _call(spec, image, params, progress)
    if common["target_width"] and common["target_height"]:
        result = PreprocessResult(fit(result.image, common["target_width"], common["target_height"],
                                      common["resize_mode"]), result.keypoints)
    return result


def _call(spec: PreprocessorSpec, image: Any, params: dict[str, Any],
          progress: Callable[[int, int], None] | None) -> PreprocessResult:
    """Call the function once (it reports progress itself if it takes `progress`), or chunk by chunk when frames
    are independent, reporting progress per chunk."""
    import torch

    function = spec.function
    total = image.shape[0]
    if "progress" in inspect.signature(function).parameters:
        return _checked(spec, function(image, **params, progress=progress), image)
    if not spec.frame_independent or total <= CHUNK_FRAMES:
        result = _checked(spec, function(image, **params), image)
        if progress is not None:
            progress(total, total)
        return result
    parts = []
    for start in range(0, total, CHUNK_FRAMES):
        chunk = image[start: start + CHUNK_FRAMES]
        parts.append(_checked(spec, function(chunk, **params), chunk))
        if progress is not None:
            progress(min(start + CHUNK_FRAMES, total), total)
    keypoints = [frame for part in parts for frame in part.keypoints] if spec.keypoints else None
    return PreprocessResult(torch.cat([part.image for part in parts]), keypoints)


def _checked(spec: PreprocessorSpec, result: Any, image: Any) -> PreprocessResult:
    """Every preprocessor returns (B, H', W', 3) float32 on the input's device (and, for pose, one keypoint dict
    per frame)."""
    keypoints = None
    if spec.keypoints:
        if not (isinstance(result, tuple) and len(result) == 2 and len(result[1]) == image.shape[0]):
            raise PreprocessError(f"{spec.name} must return (image, one keypoint dict per frame): this is a bug in "
                                  f"{spec.target}")
        result, keypoints = result
    if result.ndim != 4 or result.shape[0] != image.shape[0] or result.shape[-1] != 3:
        raise PreprocessError(f"{spec.name} returned shape {tuple(result.shape)} for input "
                              f"{tuple(image.shape)}: this is a bug in {spec.target}")
    return PreprocessResult(result.float().contiguous(), keypoints)


def __getattr__(name: str) -> Any:
    """Lazy access to the heavier helpers: ModelCache, fit, pixel_perfect_resolution, resize_short_side."""
    lazy = {"ModelCache": "models", "fit": "resize", "pixel_perfect_resolution": "resize",
            "resize_short_side": "resize"}
    if name in lazy:
        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMON_OPTIONS", "PREPROCESSORS", "ModelCache", "Option", "PreprocessResult", "PreprocessorSpec", "fit",
           "get_spec", "list_preprocessors", "pixel_perfect_resolution", "resize_short_side", "run", "run_detailed"]

"""`python -m controlnet_core preprocess NAME IN.png OUT.png [--option value ...]`: one picture through a preprocessor.

Option names are the registry's (e.g. canny `--low_threshold 100 --high_threshold 200`, on the 0-255 scale);
`--resolution`, `--target_width`, ... are the shared resolution options. The output has the input's size unless a
resolution or a target size is given. Errors print one line naming the file and the problem, and exit with 1.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ControlNetError, PreprocessError
from . import COMMON_OPTIONS, PREPROCESSORS, list_preprocessors

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `preprocess` sub-command; every registry option becomes `--name VALUE` (checked at run time)."""
    parser = subparsers.add_parser(
        "preprocess", help="make a hint image from a picture (canny, depth, ...)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog())
    parser.add_argument("name", help="preprocessor name (see the list below)")
    parser.add_argument("input", help="input picture (PNG, JPEG, ...)")
    parser.add_argument("output", help="output picture; its format follows the extension (.png, .jpg, .webp, ...)")
    parser.add_argument("--models_dir", help="depth, segmentation: a local transformers model folder; network "
                                             "preprocessors: a folder holding the published weight file, or the file")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    parser.add_argument("--keypoints_json", help="pose preprocessors: also write the keypoints here (OpenPose JSON, "
                                                 "a list with one dict per frame)")
    for option in COMMON_OPTIONS:
        parser.add_argument(f"--{option.name}", dest=f"opt_{option.name}", metavar=option.kind.upper(),
                            help=f"{option.tooltip} (default: {option.default})")
    seen: set[str] = {o.name for o in COMMON_OPTIONS}
    for option in (o for spec in PREPROCESSORS.values() for o in spec.options):
        if option.name not in seen:  # one flag per name; each preprocessor's own help and default: epilog
            seen.add(option.name)
            parser.add_argument(f"--{option.name}", dest=f"opt_{option.name}", metavar=option.kind.upper(),
                                help=argparse.SUPPRESS)
    parser.set_defaults(func=run)
    return parser


def _option_line(option) -> str:
    """`    --name KIND  tooltip (default: value)` for the help epilog."""
    text = "a picture file: white = 1" if option.kind == "mask" else option.tooltip
    return f"      --{option.name} {option.kind.upper()}  {text} (default: {option.default})"


def _epilog() -> str:
    """Every preprocessor with its own options, their help and defaults (names may repeat across preprocessors)."""
    lines = ["preprocessors and their own options:"]
    for name in list_preprocessors():
        spec = PREPROCESSORS[name]
        lines.append(f"  {name:<18} {spec.description}")
        lines += [_option_line(o) for o in spec.options]
    return "\n".join(lines)


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use, in one line (torch would raise deep inside the first tensor move)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise PreprocessError(f"--device {device!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise PreprocessError(f"--device {device}: this torch has no usable CUDA device (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PreprocessError(f"--device {device}: MPS is not available here; use --device cpu")


def check_target_size(options: dict) -> None:
    """--target_width and --target_height go together (one alone would be ignored)."""
    given = [n for n in ("target_width", "target_height") if n in options]
    if len(given) == 1:
        other = "target_height" if given[0] == "target_width" else "target_width"
        raise PreprocessError(f"--{given[0]} needs --{other} too (the output size is width x height); give both, "
                              "or --resolution for the short side")


def run(args: argparse.Namespace) -> int:
    """Execute the parsed command; 0 on success, 1 with one line on stderr otherwise."""
    try:
        _run(args)
    except (ControlNetError, OSError, ValueError) as exc:
        sys.stderr.write("error: " + " ".join(str(exc).split()) + "\n")
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    from . import get_spec, run_detailed

    spec = get_spec(args.name)
    options = {key[4:]: value for key, value in vars(args).items() if key.startswith("opt_") and value is not None}
    valid = {o.name for o in (*COMMON_OPTIONS, *spec.options)}
    stray = sorted(set(options) - valid)
    if stray:
        raise PreprocessError(f"{args.name} does not take --{', --'.join(stray)}; its options are "
                              f"{', '.join('--' + n for n in sorted(valid))}")
    check_device(args.device)
    check_target_size(options)
    if args.name == "inpaint" and "mask" not in options:
        raise PreprocessError("inpaint needs a mask: add --mask FILE (a picture: white = repaint, black = keep)")
    image = read_image(args.input, args.device)
    if "mask" in options:
        options["mask"] = read_image(options["mask"], args.device)[..., 0]  # (1, H, W) from the red/grey channel
    extra = {"models_dir": args.models_dir} if spec.model_folder or spec.net_folder else {}
    if getattr(args, "keypoints_json", None) and not spec.keypoints:
        raise PreprocessError(f"{args.name} makes no keypoints: --keypoints_json is for the pose preprocessors")
    try:
        result = run_detailed(args.name, image, **extra, **options)
    except PreprocessError as exc:
        raise PreprocessError(f"{args.input}: {exc}") from None
    hint = result.image
    write_image(hint, args.output)
    if getattr(args, "keypoints_json", None):
        write_keypoints(result.keypoints, args.keypoints_json)
    logger.info("wrote %s (%dx%d)", args.output, hint.shape[2], hint.shape[1])


def read_image(path: str, device: str = "cpu"):
    """A picture file -> (1, H, W, C) float32 in [0, 1] (grey, RGB or RGBA as stored)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise PreprocessError(f"{path}: no such file")
    try:
        with Image.open(file) as picture:
            picture.load()
            mode = picture.mode if picture.mode in ("L", "LA", "RGB", "RGBA") else "RGB"
            array = np.asarray(picture.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise PreprocessError(f"{path}: not a readable picture ({exc})") from None
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None].to(device)


def write_image(image, path: str) -> None:
    """(1, H, W, 3) in [0, 1] -> 8-bit picture, format from the extension (values outside [0, 1], e.g. inpaint's -1, are clipped)."""
    from PIL import Image

    from ._image import to_uint8

    if image.shape[0] != 1:
        logger.warning("batch of %d frames: writing the first to %s", image.shape[0], path)
    pixels = to_uint8(image[0].clamp(0, 1)).cpu().numpy()
    out = Path(path)
    if out.parent and not out.parent.is_dir():
        raise PreprocessError(f"{path}: the folder {out.parent} does not exist")
    try:
        Image.fromarray(pixels).save(out)
    except (ValueError, KeyError) as exc:  # PIL: unknown extension
        raise PreprocessError(f"{path}: cannot write this format ({exc}); use .png, .jpg or .webp") from None


def write_keypoints(keypoints: list[dict], path: str) -> None:
    """POSE_KEYPOINT frames -> a JSON file (the list, as the host's ui.openpose_json holds it)."""
    import json

    out = Path(path)
    if out.parent and not out.parent.is_dir():
        raise PreprocessError(f"{path}: the folder {out.parent} does not exist")
    out.write_text(json.dumps(keypoints))
    logger.info("wrote %s (%d frames)", path, len(keypoints))

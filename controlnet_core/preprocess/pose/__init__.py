"""Human pose: the training-time rendering (draw.py), POSE_KEYPOINT in and out (keypoints.py), the OpenPose and
DWPose detectors (cmu.py, wholebody.py and the nets in ../nets/) and video smoothing (smooth.py)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import PreprocessError
from .draw import Person, draw_people
from .keypoints import frame_json, parse


def render_frames(frames: Sequence[tuple[Sequence[Person], int, int]], width: int = 0, height: int = 0,
                  body: bool = True, hands: bool = True, face: bool = True, xinsir_sticks: bool = False,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Per frame (people, canvas width, canvas height) -> hints (B, H, W, 3) float in [0, 1], drawn at
    `width` x `height` (0: the frames' canvas, which must then be the same for all)."""
    sizes = {(w, h) for _, w, h in frames}
    if not (width and height) and len(sizes) > 1:
        raise PreprocessError(f"the frames have different canvas sizes {sorted(sizes)}: give width and height")
    w, h = (width, height) if width and height else next(iter(sizes))
    hints = [draw_people(people, h, w, body, hands, face, xinsir_sticks) for people, _, _ in frames]
    return torch.from_numpy(np.stack(hints)).to(device=device, dtype=torch.float32) / 255.0


def render_pose_keypoint(data: Any, width: int = 0, height: int = 0, body: bool = True, hands: bool = True,
                         face: bool = True, xinsir_sticks: bool = False) -> torch.Tensor:
    """POSE_KEYPOINT (OpenPose JSON frames) -> hints (B, H, W, 3) float in [0, 1]."""
    return render_frames(parse(data), width, height, body, hands, face, xinsir_sticks)


def frames_json(frames: Sequence[tuple[Sequence[Person], int, int]]) -> list[dict]:
    """Per frame (people, canvas width, canvas height) -> POSE_KEYPOINT (one OpenPose dict per frame)."""
    return [frame_json(people, w, h) for people, w, h in frames]


def openpose(image: torch.Tensor, hands: bool = False, face: bool = False, draw_body: bool = True,
             xinsir_sticks: bool = False, smooth: bool = False, batch_size: int = 4, models_dir=None,
             model_cache=None, progress=None) -> tuple[torch.Tensor, list[dict]]:
    """OpenPose (body_pose_model.pth; hands: hand_pose_model.pth; face: facenet.pth) on (B, H, W, 3) in [0, 1] ->
    (hints (B, H, W, 3) drawn at the picture's size, POSE_KEYPOINT frames in its pixels)."""
    from .._image import to_uint8
    from ..nets import NetCache
    from .cmu import detect, load_nets

    cache = model_cache if model_cache is not None else NetCache()
    frames = to_uint8(image[..., :3]).cpu().numpy()  # (B, H, W, 3) uint8 RGB
    people = detect(frames, *load_nets(cache, models_dir, hands, face), batch_size, progress)
    return _finish(people, image, draw_body, hands, face, xinsir_sticks, smooth)


def dwpose(image: torch.Tensor, hands: bool = True, face: bool = True, draw_body: bool = True,
           xinsir_sticks: bool = False, smooth: bool = False, batch_size: int = 4, models_dir=None,
           model_cache=None, progress=None) -> tuple[torch.Tensor, list[dict]]:
    """DWPose (yolox_l.pth person boxes, dw-ll_ucoco_384.pth whole-body keypoints) on (B, H, W, 3) in [0, 1] ->
    (hints (B, H, W, 3) drawn at the picture's size, POSE_KEYPOINT frames in its pixels)."""
    from .._image import to_uint8
    from ..nets import NetCache
    from .wholebody import detect, load_nets

    cache = model_cache if model_cache is not None else NetCache()
    frames = to_uint8(image[..., :3]).cpu().numpy()  # (B, H, W, 3) uint8 RGB
    det, pose, device = load_nets(cache, models_dir, image.device)
    people = detect(frames, det, pose, device, hands, face, batch_size, progress)
    return _finish(people, image, draw_body, hands, face, xinsir_sticks, smooth)


def _finish(people: list[list[Person]], image: torch.Tensor, body: bool, hands: bool, face: bool,
            xinsir_sticks: bool, smooth: bool) -> tuple[torch.Tensor, list[dict]]:
    """Detected people per frame -> (hints on the image's device, POSE_KEYPOINT), smoothed over time if asked."""
    height, width = image.shape[1:3]
    if smooth:
        from .smooth import smooth_people

        people = smooth_people(people)
    frames = [(p, width, height) for p in people]
    return render_frames(frames, body=body, hands=hands, face=face, xinsir_sticks=xinsir_sticks,
                         device=image.device), frames_json(frames)


__all__ = ["Person", "draw_people", "dwpose", "frame_json", "frames_json", "openpose", "parse", "render_frames", "render_pose_keypoint"]

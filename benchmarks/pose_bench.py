"""Pose preprocessors: frames per second, ours batched vs controlnet_aux 0.0.10 frame by frame, same weights.

OpenPose body (the real architecture with random weights, tests/learned_nets.py) on a clip of `--frames` frames at
`--size`^2: ours through `controlnet_core.preprocess.run_detailed("openpose")` with the weights held by a NetCache
(loaded outside the timing), controlnet_aux through `OpenposeDetector.__call__` one frame at a time (uint8 in, as
comfyui_controlnet_aux calls it). The people found per frame are printed (random weights decide how many) and
must be the same on both sides. Runs alternate aux, ours, aux; ours is compared with the mean of its neighbours.

DWPose (YOLOX-l + RTMPose-l, random weights biased to find people, tests/core/test_pose_dwpose.py): ours through
`run_detailed("dwpose")` (frames batched through the detector, all people through the pose net at once) vs rtmlib
0.0.16's YOLOX and RTMPose tools frame by frame and box by box, their ONNX call replaced by the same torch modules
as published (onnxruntime is not installed here; ours are loaded through the nets' `finish`, which folds the
BatchNorms into the convolutions), with controlnet_aux's COCO -> OpenPose step left out.

    python -m benchmarks.pose_bench [--frames 16] [--size 512] [--repeat 1] [--device cpu|cuda]
                                    [--pose openpose,dwpose]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from controlnet_core.preprocess import run_detailed
from controlnet_core.preprocess.nets import NetCache
from controlnet_core.preprocess.nets.openpose import OPENPOSE_BODY
from tests.learned_nets import random_weights


def clip(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(frames, size, size, 3) uint8: coloured blocks, panned 4 px per frame."""
    g = np.random.default_rng(seed)
    img = np.kron(g.integers(0, 256, (size // 8, size // 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return np.stack([img[:, 4 * i: 4 * i + size] for i in range(frames)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pose", default="openpose,dwpose", help="comma-separated: openpose, dwpose")
    args = parser.parse_args(argv)
    for name in args.pose.split(","):
        {"openpose": openpose_row, "dwpose": dwpose_row}[name](args)
    return 0


def timed(fns: dict, repeat: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of fns["aux"], fns["ours"], fns["aux"] (alternating), `repeat` times."""
    times = {"aux": [], "ours": []}
    for _ in range(repeat):
        for name in ("aux", "ours", "aux"):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fns[name]()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def ours_on_clip(name: str, folder: Path, args) -> tuple[np.ndarray, Callable[[], object]]:
    """(the clip's uint8 frames, a call running our `name` preprocessor batched on them with one NetCache)."""
    frames = clip(args.frames, args.size)
    image = torch.from_numpy(frames).float().div(255.0).to(args.device)
    cache = NetCache()

    def ours():
        return run_detailed(name, image, models_dir=str(folder), model_cache=cache, batch_size=args.batch_size)

    return frames, ours


def report(title: str, theirs_label: str, ours, theirs, args) -> None:
    """Time theirs / ours alternately and print both frame rates and the ratio."""
    times = timed({"aux": theirs, "ours": ours}, args.repeat, args.device)
    fps_aux = args.frames / statistics.mean(times["aux"])
    fps_ours = args.frames / statistics.mean(times["ours"])
    print(title)
    print(f"  {theirs_label + ':':<31}{fps_aux:6.2f} fps")
    print(f"  {f'ours batched ({args.batch_size}):':<31}{fps_ours:6.2f} fps   ({fps_ours / fps_aux:.2f}x)")


def dwpose_row(args) -> None:
    from controlnet_core.preprocess.nets import build_loaded
    from controlnet_core.preprocess.nets.rtmpose import DWPOSE_L
    from controlnet_core.preprocess.nets.yolox import YOLOX_L
    from tests.core.test_pose_dwpose import (
        detector_weights,
        pose_weights,
        rtm_detector,
        rtm_pose,
        upstream_file,
    )

    sds = {"det": detector_weights(), "pose": pose_weights()}
    folder = Path(tempfile.mkdtemp())
    upstream_file(sds["det"], folder / "yolox_l.pth")
    upstream_file(sds["pose"], folder / "dw-ll_ucoco_384.pth")
    # the reference runs the modules as published (ours fold their BatchNorms into the convolutions at load)
    det = build_loaded(YOLOX_L, sds["det"], device=args.device, finish=False)
    pose = build_loaded(DWPOSE_L, sds["pose"], device=args.device, finish=False)
    det_tool, pose_tool = rtm_detector(det), rtm_pose(pose, None)
    frames, ours = ours_on_clip("dwpose", folder, args)

    def theirs():
        out = []
        for f in frames:
            boxes, classes = det_tool(f)
            out.append(pose_tool(f, bboxes=list(boxes[classes == 0])) if (classes == 0).any() else None)
        return out

    people = [len(f["people"]) for f in ours().keypoints]  # loads the weights
    report(f"dwpose, {args.frames} frames at {args.size}^2 on {args.device}, people per frame {people}",
           "rtmlib tools frame by frame", ours, theirs, args)


def openpose_row(args) -> None:
    from controlnet_aux.open_pose import OpenposeDetector, util
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.model import bodypose_model

    sd = random_weights(OPENPOSE_BODY, 0)
    folder = Path(tempfile.mkdtemp())
    torch.save(sd, folder / OPENPOSE_BODY.files[0])
    body = Body.__new__(Body)
    body.model = bodypose_model()
    body.model.load_state_dict(util.transfer(body.model, sd))
    body.model.eval().to(args.device)
    aux = OpenposeDetector(body)
    frames, ours = ours_on_clip("openpose", folder, args)

    def theirs():
        return [aux(f, detect_resolution=args.size, image_resolution=args.size, output_type="np") for f in frames]

    result = ours()  # loads the weights; also the parity check below
    people = [len(f["people"]) for f in result.keypoints]
    ref = [len(aux.detect_poses(f)) for f in frames]
    assert people == ref, (people, ref)
    report(f"openpose body, {args.frames} frames at {args.size}^2 on {args.device}, people per frame {people}",
           "controlnet_aux frame by frame", ours, theirs, args)


if __name__ == "__main__":
    raise SystemExit(main())

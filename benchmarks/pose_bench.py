"""Pose preprocessors: frames per second, ours batched vs controlnet_aux 0.0.10 frame by frame, same weights.

OpenPose body (the real architecture with random weights, tests/learned_nets.py) on a clip of `--frames` frames at
`--size`^2: ours through `controlnet_core.preprocess.run_detailed("openpose")` with the weights held by a NetCache
(loaded outside the timing), controlnet_aux through `OpenposeDetector.__call__` one frame at a time (uint8 in, as
comfyui_controlnet_aux calls it). The people found per frame are printed (random weights decide how many) and
must be the same on both sides. Runs alternate aux, ours, aux; ours is compared with the mean of its neighbours.

    python -m benchmarks.pose_bench [--frames 16] [--size 512] [--repeat 1] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
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
    args = parser.parse_args(argv)

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
    frames = clip(args.frames, args.size)
    image = torch.from_numpy(frames).float().div(255.0).to(args.device)
    cache = NetCache()

    def ours():
        return run_detailed("openpose", image, models_dir=str(folder), model_cache=cache, batch_size=args.batch_size)

    def theirs():
        return [aux(f, detect_resolution=args.size, image_resolution=args.size, output_type="np") for f in frames]

    result = ours()  # loads the weights; also the parity check below
    people = [len(f["people"]) for f in result.keypoints]
    ref = [len(aux.detect_poses(f)) for f in frames]
    assert people == ref, (people, ref)
    times = {"aux": [], "ours": []}
    for _ in range(args.repeat):
        for name, fn in (("aux", theirs), ("ours", ours), ("aux", theirs)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    fps_aux = args.frames / statistics.mean(times["aux"])
    fps_ours = args.frames / statistics.mean(times["ours"])
    print(f"openpose body, {args.frames} frames at {args.size}^2 on {args.device}, people per frame {people}")
    print(f"  controlnet_aux frame by frame: {fps_aux:6.2f} fps")
    print(f"  ours batched ({args.batch_size}):          {fps_ours:6.2f} fps   ({fps_ours / fps_aux:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

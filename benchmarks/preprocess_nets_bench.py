"""Learned preprocessors: frames per second, ours batched vs controlnet_aux 0.0.10 frame by frame, same weights.

Both sides run the real architectures with the same random weights (tests/learned_nets.py): ours through
`controlnet_core.preprocess.run` with the weights held by a NetCache (loaded once, outside the timing), controlnet_aux
through its detector, one frame at a time, with the conversions comfyui_controlnet_aux makes around each call
(float frame -> uint8 -> detector -> float). Runs alternate aux, ours, aux, ours, ..., aux; each of our runs is
compared with the mean of its two neighbours, so load from other processes that drifts over the run cancels.
Before timing, the two hints are checked to agree (within 1 grey level on 99.9 % of the pixels).

    python -m benchmarks.preprocess_nets_bench [--frames 16] [--size 512] [--repeat 2] [--nets hed,pidinet,...]
                                               [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from controlnet_core.preprocess import run
from controlnet_core.preprocess.nets import NetCache
from controlnet_core.preprocess.nets.hed import HED
from controlnet_core.preprocess.nets.lineart import LINEART
from controlnet_core.preprocess.nets.lineart_anime import LINEART_ANIME
from controlnet_core.preprocess.nets.mlsd import MLSD_LARGE
from controlnet_core.preprocess.nets.normalbae import NORMAL_BAE
from controlnet_core.preprocess.nets.pidinet import PIDINET
from controlnet_core.preprocess.nets.teed import TEED
from tests.learned_nets import random_weights, reference_detector, save_upstream

NETS = {"hed": HED, "pidinet": PIDINET, "lineart": LINEART, "mlsd": MLSD_LARGE, "normal_bae": NORMAL_BAE,
        "teed": TEED, "lineart_anime": LINEART_ANIME}
DEFAULT = ("hed", "pidinet", "lineart", "mlsd", "normal_bae")


def video(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """(frames, size, size, 3) on the 8-bit grid: one picture of discs with a mild texture (as photographs have),
    panned 4 px per frame. Without texture, flat areas give random-weight M-LSD plateaus of equal centre scores,
    and which of them make its top 200 then depends on the last bit of the arithmetic."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size * 2]
    img = np.zeros((size, size * 2, 3), np.float32) + g.uniform(0, 255, 3)
    for _ in range(24):
        cy, cx, r = g.uniform(0, size), g.uniform(0, 2 * size), g.uniform(size / 32, size / 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = g.uniform(0, 255, 3)
    img += g.normal(0, 4, img.shape[:2])[..., None]
    out = np.stack([img[:, 4 * i: 4 * i + size] for i in range(frames)]).round().clip(0, 255)
    return torch.from_numpy(out).float() / 255.0


def aux_frame_by_frame(detector, batch: torch.Tensor, size: int, extra: dict) -> torch.Tensor:
    """What comfyui_controlnet_aux does per frame around a controlnet_aux detector."""
    results = []
    for frame in batch:
        u8 = np.asarray(frame.cpu().numpy() * 255.0, dtype=np.uint8)
        hint = detector(u8, detect_resolution=size, output_type="np", **extra)
        results.append(torch.from_numpy(hint.astype(np.float32) / 255.0))
    return torch.stack(results)


def timed(function: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(name: str, frames: torch.Tensor, repeat: int, device: str, folder: Path) -> dict[str, float]:
    """Seconds per batch of both sides and the paired speed-up of ours."""
    arch = NETS[name]
    sd = random_weights(arch)
    save_upstream(arch, sd, folder)
    detector = reference_detector(arch, sd).to(device)
    size = frames.shape[1]
    extra = {} if name == "teed" else {"image_resolution": size}
    cache = NetCache()
    theirs = lambda: aux_frame_by_frame(detector, frames, size, extra)
    ours = lambda: run(name, frames.to(device), models_dir=folder, model_cache=cache)
    a, b = theirs() * 255, ours().cpu() * 255  # warm-up, and the check that both compute the same hint
    agree = float(((a - b).abs() <= 1.001).float().mean())
    if agree < 0.999:
        raise SystemExit(f"{name}: only {agree:.3%} of pixels agree; the timing would compare different work")
    order = ["aux"] + ["ours", "aux"] * repeat
    times = [(side, timed(theirs if side == "aux" else ours, device)) for side in order]
    ratios = [(times[i - 1][1] + times[i + 1][1]) / 2 / t for i, (side, t) in enumerate(times) if side == "ours"]
    aux_s = statistics.median(t for s, t in times if s == "aux")
    ours_s = statistics.median(t for s, t in times if s == "ours")
    return {"aux": aux_s, "ours": ours_s, "ratio": statistics.median(ratios), "low": min(ratios),
            "high": max(ratios), "agree": agree}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--nets", default=",".join(DEFAULT), help=f"comma-separated, from {', '.join(NETS)}")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    frames = video(args.frames, args.size)
    print(f"{args.frames} frames of {args.size}x{args.size} on {args.device} (torch threads "
          f"{torch.get_num_threads()}); controlnet_aux {_aux_version()} frame by frame vs ours batched; "
          f"{args.repeat} paired repeats")
    print(f"{'preprocessor':<14} {'aux frames/s':>13} {'ours frames/s':>14} {'speed-up (low-high)':>22} {'agree':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            r = bench(name, frames, args.repeat, args.device, Path(tmp) / name)
            print(f"{name:<14} {args.frames / r['aux']:13.2f} {args.frames / r['ours']:14.2f} "
                  f"{r['ratio']:9.2f}x ({r['low']:.2f}-{r['high']:.2f}) {r['agree']:8.4%}", flush=True)
    return 0


def _aux_version() -> str:
    from importlib.metadata import version

    return version("controlnet-aux")


if __name__ == "__main__":
    sys.exit(main())

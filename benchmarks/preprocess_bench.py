"""Preprocessor benchmark: a 64-frame 512x512 canny batch, our batched call vs OpenCV frame by frame, side by side.

The frame-by-frame baseline is what comfyui_controlnet_aux does per frame (utils.py common_annotator_call): float
frame -> uint8 numpy -> cv2.Canny -> 3 channels -> float tensor, then a stack. Also prints the per-photo F1 (1-pixel
tolerance) and exact pixel agreement of our batched torch Canny against cv2.Canny on skimage's photographs.

    python -m benchmarks.preprocess_bench [--frames 64] [--size 512] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from controlnet_core.preprocess import run

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "immunohistochemistry")


def photographs() -> dict[str, np.ndarray]:
    """skimage's sample photographs as (H, W, 3) uint8; empty when scikit-image is absent."""
    try:
        import skimage.data as data
    except ImportError:
        return {}
    out = {}
    for name in PHOTOS:
        array = getattr(data, name)()
        out[name] = np.repeat(array[..., None], 3, -1) if array.ndim == 2 else np.ascontiguousarray(array[..., :3])
    return out


def video(frames: int, size: int, photos: dict[str, np.ndarray]) -> torch.Tensor:
    """A (frames, size, size, 3) float batch: photographs resized to size and panned a little frame to frame."""
    sources = [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in photos.values()]
    if not sources:  # no scikit-image: smooth random pictures with edges
        rng = np.random.default_rng(0)
        sources = [cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (size, size),
                              interpolation=cv2.INTER_NEAREST)]
    out = [np.roll(sources[i % len(sources)], 3 * i, axis=1) for i in range(frames)]
    return torch.from_numpy(np.stack(out)).float() / 255.0


def aux_style_canny(batch: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """OpenCV frame by frame with the per-frame conversions comfyui_controlnet_aux performs."""
    results = []
    for frame in batch:
        rgb = np.asarray(frame.numpy() * 255.0, dtype=np.uint8)
        edges = cv2.Canny(rgb, low, high)
        results.append(torch.from_numpy(np.stack([edges] * 3, axis=-1).astype(np.float32) / 255.0))
    return torch.stack(results)


def timed(function: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def f1_with_tolerance(ours: np.ndarray, reference: np.ndarray) -> float:
    """Edge F1 with a 1-pixel (3x3) matching tolerance."""
    kernel = np.ones((3, 3), np.uint8)
    precision = (ours & (cv2.dilate(reference.astype(np.uint8), kernel) > 0)).sum() / max(1, ours.sum())
    recall = (reference & (cv2.dilate(ours.astype(np.uint8), kernel) > 0)).sum() / max(1, reference.sum())
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def speed_table(batch: torch.Tensor, repeat: int) -> list[tuple[str, float]]:
    """Seconds per batch for each way of computing the same edges."""
    frames_u8 = [np.ascontiguousarray(f) for f in (batch.numpy() * 255).round().astype(np.uint8)]
    rows = [("opencv frame by frame (Aux-style conversions)", timed(lambda: aux_style_canny(batch), repeat)),
            ("ours: run('canny') batched, auto backend", timed(lambda: run("canny", batch), repeat)),
            ("ours: run('canny', backend='torch') batched", timed(lambda: run("canny", batch, backend="torch"),
                                                                  repeat)),
            ("cv2.Canny alone on ready uint8 frames (floor)", timed(lambda: [cv2.Canny(f, 100, 200)
                                                                          for f in frames_u8], repeat))]
    assert torch.equal(run("canny", batch), aux_style_canny(batch))  # the same numbers, or the timing is moot
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Print the speed table (with ratios to the frame-by-frame baseline) and the per-photo F1 table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    photos = photographs()
    batch = video(args.frames, args.size, photos)
    print(f"canny, {args.frames} frames of {args.size}x{args.size}, CPU "
          f"(torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}), median of {args.repeat}")
    rows = speed_table(batch, args.repeat)
    baseline = rows[0][1]
    print(f"{'method':<50} {'s/batch':>8} {'ms/frame':>9} {'speed-up':>9}")
    for name, seconds in rows:
        print(f"{name:<50} {seconds:8.3f} {1000 * seconds / args.frames:9.2f} {baseline / seconds:8.2f}x")
    print()
    print(f"{'photo':<22} {'size':>10} {'edge px':>8} {'F1 (1px)':>9} {'exact px':>10}")
    for name, rgb in photos.items():
        reference = cv2.Canny(rgb, 100, 200) > 0
        ours = run("canny", torch.from_numpy(rgb)[None].float() / 255, backend="torch")[0, ..., 0].numpy() > 0.5
        agreement = 100.0 * (ours == reference).mean()
        print(f"{name:<22} {rgb.shape[1]:>4}x{rgb.shape[0]:<5} {int(reference.sum()):>8} "
              f"{f1_with_tolerance(ours, reference):9.4f} {agreement:9.4f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

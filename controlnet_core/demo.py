"""The trained demo: the paper's recipe trains the toy ControlNet from the committed fill-circles base on this CPU,
then one PNG shows the hints, samples without and with the control, and the control-following metric over training
steps (the "sudden convergence" of paper §3.3 / Fig. 4).

Base: `controlnet_core/toy/base.safetensors` (the production `ControlledUNet` at 16 px, made by
`python -m controlnet_core.toy.base`). ControlNet: `create_controlnet_from_unet` (paper §3.2 trainable copy, zero
convs), trained by `controlnet_core.train.recipe.Trainer` at the toy recipe (lr 3e-4, batch 32, 50 % prompt drop).
Metric: shape IoU of the sample's prompt-free segmentation against the hint's disk on 32 fixed conditions with fixed
noise (controlnet_core/toy/run.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .errors import ControlNetError

logger = logging.getLogger(__name__)

CELL = 48  # pixels per 16-px sample (nearest-neighbour x3)
PAD = 12
COLUMNS = 8  # conditions shown
CURVE_H = 220
TEXT_H = 18


@dataclass(frozen=True)
class DemoSettings:
    """Training steps, evaluation interval, evaluation-set size, learning rate, seed."""

    steps: int = 500
    eval_every: int = 25
    eval_size: int = 32
    lr: float = 3e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1:
            raise ControlNetError(f"demo steps {self.steps}, eval_every {self.eval_every}: use at least 1 (e.g. "
                                  "--steps 500)")
        if self.eval_size < COLUMNS:
            raise ControlNetError(f"demo eval_size {self.eval_size}: use at least {COLUMNS}")


@dataclass
class DemoResult:
    path: Path
    curve: list[tuple[int, dict[str, float]]]
    empty_prompt: dict[str, float]  # final metrics with the empty prompt
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        first, last = self.curve[0], self.curve[-1]
        return f"shape IoU {first[1]['iou']:.2f} -> {last[1]['iou']:.2f} after {last[0]} steps"


def _tiles(images: Tensor) -> Image.Image:
    """(N, 3, 16, 16) in [-1, 1] (or hints in [0, 1] mapped by the caller) -> one row image."""
    x = ((images[:COLUMNS].clamp(-1, 1) + 1) * 127.5).round().byte()  # (N, 3, S, S)
    row = x.permute(2, 0, 3, 1).reshape(x.shape[2], -1, 3).numpy()  # (S, N*S, 3)
    img = Image.fromarray(row).resize((CELL * COLUMNS, CELL), Image.NEAREST)
    out = Image.new("RGB", (CELL * COLUMNS + PAD * (COLUMNS - 1), CELL), "white")
    for i in range(COLUMNS):
        out.paste(img.crop((i * CELL, 0, (i + 1) * CELL, CELL)), (i * (CELL + PAD), 0))
    return out


def _curve(curve: list[tuple[int, dict[str, float]]], width: int) -> Image.Image:
    """Shape IoU and edge F1 against the training step, 0..1 on the y axis."""
    img = Image.new("RGB", (width, CURVE_H), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 40, width - 10, 10, CURVE_H - 30
    d.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    last = max(curve[-1][0], 1)
    for y in (0.0, 0.5, 0.8, 1.0):
        py = bottom - y * (bottom - top)
        d.line((left, py, right, py), fill=(220, 220, 220))
        d.text((5, py - 6), f"{y:.1f}", fill=(0, 0, 0))
    for key, colour in (("iou", (200, 30, 30)), ("edge_f1", (30, 90, 200))):
        pts = [(left + s / last * (right - left), bottom - m[key] * (bottom - top)) for s, m in curve]
        d.line(pts, fill=colour, width=2)
    d.text((left, bottom + 8), f"0 .. {last} training steps;  red: shape IoU   blue: edge F1", fill=(0, 0, 0))
    return img


def _picture(hints: Tensor, targets: Tensor, plain: Tensor, controlled: Tensor, empty: Tensor,
             curve: list[tuple[int, dict[str, float]]], title: str) -> Image.Image:
    rows = [("hint (circle outline)", _tiles(hints * 2 - 1)), ("training target (for reference)", _tiles(targets)),
            ("base alone (no control)", _tiles(plain)), ("base + trained ControlNet", _tiles(controlled)),
            ("base + ControlNet, empty prompt", _tiles(empty))]
    width = rows[0][1].width + 2 * PAD
    height = TEXT_H * 2 + PAD + sum(TEXT_H + r.height + PAD for _, r in rows) + CURVE_H + PAD
    canvas = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(canvas)
    for i, line in enumerate(title.split("\n")):
        d.text((PAD, PAD + i * 14), line, fill=(0, 0, 0))
    y = TEXT_H * 2 + PAD
    for label, row in rows:
        d.text((PAD, y), label, fill=(0, 0, 0))
        canvas.paste(row, (PAD, y + TEXT_H))
        y += TEXT_H + row.height + PAD
    canvas.paste(_curve(curve, width - 2 * PAD), (PAD, y))
    return canvas


def run_demo(out: Path | str, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Train, evaluate every `eval_every` steps, sample with/without control, write the PNG; leaves the global RNG."""
    from .toy import run as toy

    out = Path(out)
    seconds: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        start = time.perf_counter()
        run = toy.start(toy.recipe(lr=settings.lr, seed=settings.seed), data_seed=settings.seed)
        ev = toy.EvalSet.make(settings.eval_size)
        seconds["load"] = time.perf_counter() - start
        toy.advance(run, settings.steps, eval_every=settings.eval_every, ev=ev)
        if run.curve[-1][0] != run.trainer.step:
            run.curve.append((run.trainer.step, toy.evaluate(run.base, run.trainer.controlnet, ev)))
        seconds["train + eval"] = time.perf_counter() - start - seconds["load"]
        net = run.trainer.controlnet
        plain = toy.sample(run.base, None, ev)
        controlled = toy.sample(run.base, net, ev)
        empty = toy.sample(run.base, net, ev, prompted=False)
        empty_metrics = toy.evaluate(run.base, net, ev, prompted=False)
    result = DemoResult(out, run.curve, empty_metrics, seconds)
    title = (f"ControlNet trained on this CPU from the toy base: {result.summary}\n"
             f"lr {settings.lr:g}, batch 32, 50 % prompt drop; empty-prompt IoU {empty_metrics['iou']:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _picture(ev.data.hint, ev.data.target, plain, controlled, empty, run.curve, title).save(out)
    logger.info("wrote %s (%s)", out, result.summary)
    return result


def curve_rows(result: DemoResult) -> list[str]:
    """'step iou edge_f1 ssim' lines."""
    return [f"{s:5d} {m['iou']:.3f} {m['edge_f1']:.3f} {m['ssim']:.3f}" for s, m in result.curve]




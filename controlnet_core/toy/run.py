"""Train the toy ControlNet on fill-circles with the production recipe and measure how well the control is followed.

Shape IoU (research/training.md §4.1): a prompt-free 2-means segmentation of each sample (background centroid from
the border pixels, foreground from the farthest pixel, 6 iterations; empty when the centroids are < 0.4 apart)
against the condition's disk, on 32 fixed conditions with fixed initial noise, DDIM 10 steps, no CFG.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ..controlnet import ControlNet, create_controlnet_from_unet
from ..train.diffusion import TOY_SCHEDULE, ddim_sample
from ..train.metrics import edge_f1, iou, mask_edges, ssim
from ..train.recipe import Batch, TrainConfig, Trainer
from .data import NULL_TOKEN, CircleBatch, fill_circles
from .model import TOY_HINT_WIDTHS, TOY_UNET, ToyBase, load_base

log = logging.getLogger(__name__)
TOY_RECIPE = TrainConfig(lr=3e-4, batch_size=32, weight_decay=0.0, prompt_drop=0.5, schedule=TOY_SCHEDULE)
EVAL_SEED = 1234
DataFn = Callable[[int, torch.Generator], CircleBatch]  # (n, generator) -> a batch (fill_circles, shapes.shapes)


class CircleStream:
    """Seeded batches of fill-circles (or another `data` function, e.g. shapes.shapes) whose position in the stream
    is checkpointed with the trainer."""

    def __init__(self, batch: int, seed: int, data: DataFn = fill_circles):
        self.batch, self.generator, self.data = batch, torch.Generator().manual_seed(seed), data

    def next(self) -> CircleBatch:
        return self.data(self.batch, self.generator)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


def to_batch(data: CircleBatch, base: ToyBase) -> Batch:
    with torch.no_grad():
        return Batch(data.target, data.hint, base.text(data.tokens))


def empty_context(base: ToyBase) -> Tensor:
    with torch.no_grad():
        return base.text(torch.full((1, 2), NULL_TOKEN))  # (1, 2, D)


def make_controlnet(base: ToyBase, init: str = "zero", seed: int = 0) -> ControlNet:
    """Trainable copy of the base encoder (paper §3.2); init "ordinary" re-initialises the zero convs and the hint's
    last conv with PyTorch's default (the paper's §4.2 "standard convolution" ablation)."""
    with torch.random.fork_rng(devices=[]):  # seeded hint-encoder init; the caller's global RNG is left alone
        torch.manual_seed(seed)
        net = create_controlnet_from_unet(base.unet.state_dict(), hint_widths=TOY_HINT_WIDTHS,
                                          norm_groups=TOY_UNET.norm_groups)
        if init == "ordinary":
            _reinit(net)
    if init not in ("zero", "ordinary"):
        raise ValueError(f"init {init!r}: use 'zero' (the paper) or 'ordinary' (the §4.2 ablation)")
    return net


def _reinit(net: ControlNet) -> None:
    """PyTorch's default init for the zero convs and the hint encoder's last conv."""
    for m in [*net.zero_convs, net.middle_block_out, net.input_hint_block[-1]]:
        for conv in m.modules():
            if isinstance(conv, nn.Conv2d):
                conv.reset_parameters()


def segment(images: Tensor) -> Tensor:
    """Prompt-free 2-means foreground of images (B, 3, S, S) -> (B, S, S) bool."""
    b = images.shape[0]
    px = images.flatten(2).transpose(1, 2)  # (B, S*S, 3)
    border = torch.ones(images.shape[2:], dtype=torch.bool)
    border[1:-1, 1:-1] = False
    bg = px[:, border.flatten()].mean(1)  # (B, 3)
    fg = px[torch.arange(b), (px - bg[:, None]).norm(dim=2).argmax(1)]  # (B, 3)
    for _ in range(6):
        near_fg = (px - fg[:, None]).norm(dim=2) < (px - bg[:, None]).norm(dim=2)  # (B, S*S)
        w = near_fg.float()[..., None]
        fg = (px * w).sum(1) / w.sum(1).clamp(min=1)
        bg = (px * (1 - w)).sum(1) / (1 - w).sum(1).clamp(min=1)
    near_fg &= ((fg - bg).norm(dim=1) >= 0.4)[:, None]
    return near_fg.view(b, *images.shape[2:])


@dataclass(frozen=True)
class EvalSet:
    data: CircleBatch
    noise: Tensor  # (N, 3, S, S), fixed

    @classmethod
    def make(cls, n: int = 32, seed: int = EVAL_SEED, data: DataFn = fill_circles) -> EvalSet:
        g = torch.Generator().manual_seed(seed)
        data = data(n, g)
        return cls(data, torch.randn(data.target.shape, generator=g))


def sample(base: ToyBase, net: ControlNet | None, ev: EvalSet, *, prompted: bool = True, steps: int = 10) -> Tensor:
    """DDIM samples (N, 3, S, S) in [-1, 1] with the control (net) or without (None)."""
    tokens = ev.data.tokens if prompted else torch.full_like(ev.data.tokens, NULL_TOKEN)
    with torch.no_grad():
        ctx = base.text(tokens)
        was = net.training if net is not None else False
        if net is not None:
            net.eval()

        def eps(x: Tensor, t: Tensor) -> Tensor:
            control = net(x, ev.data.hint, t, ctx) if net is not None else None
            return base.unet(x, t, ctx, control=control)

        out = ddim_sample(eps, ev.noise, TOY_SCHEDULE, steps, clip=1.0).clamp(-1, 1)
        if net is not None:
            net.train(was)
    return out


def evaluate(base: ToyBase, net: ControlNet | None, ev: EvalSet, *, prompted: bool = True) -> dict[str, float]:
    """shape IoU, edge F1 (1 px), SSIM to the target: means over the eval set."""
    x = sample(base, net, ev, prompted=prompted)
    mask = segment(x)
    outline = ev.data.hint[:, 0] > 0.5
    return {"iou": iou(mask, ev.data.mask).mean().item(),
            "edge_f1": edge_f1(mask_edges(mask), outline).mean().item(),
            "ssim": ssim(x, ev.data.target).mean().item()}


@dataclass
class ToyRun:
    trainer: Trainer
    stream: CircleStream
    base: ToyBase
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def start(config: TrainConfig = TOY_RECIPE, *, init: str = "zero", base: ToyBase | None = None,
          data_seed: int = 0, data: DataFn = fill_circles) -> ToyRun:
    base = base or load_base()
    trainer = Trainer(base.unet, make_controlnet(base, init, config.seed), config, empty_context(base))
    return ToyRun(trainer, CircleStream(config.batch_size, data_seed, data), base)


def advance(run: ToyRun, steps: int, *, eval_every: int = 0, ev: EvalSet | None = None) -> ToyRun:
    """Train `steps` optimiser steps; evaluate at the start and every `eval_every` steps (0: never)."""
    ga = run.trainer.config.grad_accumulation
    begin = time.perf_counter()
    for _ in range(steps):
        if eval_every and run.trainer.step % eval_every == 0:
            run.curve.append((run.trainer.step, evaluate(run.base, run.trainer.controlnet, ev)))
            log.info("step %d %s (%.0f s)", run.trainer.step, run.curve[-1][1], time.perf_counter() - begin)
        run.trainer.train_step([to_batch(run.stream.next(), run.base) for _ in range(ga)])
    if eval_every and run.trainer.step % eval_every == 0:
        run.curve.append((run.trainer.step, evaluate(run.base, run.trainer.controlnet, ev)))
        log.info("step %d %s (%.0f s)", run.trainer.step, run.curve[-1][1], time.perf_counter() - begin)
    return run


def recipe(**changes) -> TrainConfig:
    return replace(TOY_RECIPE, **changes)


def main(argv: list[str] | None = None) -> int:
    """`python -m controlnet_core.toy.run --init zero --steps 600 --json curve.json`: one measured curve."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--init", choices=("zero", "ordinary"), default="zero")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=TOY_RECIPE.lr)
    ap.add_argument("--prompt-drop", type=float, default=TOY_RECIPE.prompt_drop)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    ev = EvalSet.make()
    begin = time.perf_counter()
    run = advance(start(recipe(lr=args.lr, prompt_drop=args.prompt_drop), init=args.init), args.steps,
                  eval_every=args.eval_every, ev=ev)
    empty = evaluate(run.base, run.trainer.controlnet, ev, prompted=False)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "curve": run.curve, "empty_prompt": empty,
                   "seconds": time.perf_counter() - begin}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
